// The tether JavaScript client SDK: one connection to a tether server, speaking
// protocol v1 (docs/protocol.md) with msgpack over a WebSocket.
//
// It mirrors the Python SDK (tether/client/_client.py, docs/client.md): the
// hello/welcome handshake, heartbeats, requests matched by ref, typed events,
// sends that are never stored twice (cid), automatic reconnect with full-jitter
// backoff, session resume with no loss and no duplicates, and resending what a
// dropped connection left unanswered. No build step: a plain ES module.

import { decode, encode } from "./msgpack.js";

export const SUBPROTOCOL = "tether.v1";
export const CLIENT_NAME = "tether-js/0.1";
/** `hello.resume` names at most this many rooms (the most recently active). */
export const MAX_RESUME_ROOMS = 1000;
/** Receipts sent without ref this long before a drop are sent again after it. */
export const RECEIPT_REPLAY_MS = 2000;
export const MAX_HISTORY_LIMIT = 500;
export const MAX_CID_CHARS = 64;
const MAX_SUBSCRIBE_USERS = 100;
// Resume bookkeeping bounds per room: seqs held past a gap, messages waiting
// for a gap to fill while the room recovers.
const MAX_AHEAD = 1000;
const MAX_WAITING = 1000;
// A resumed room answers `recovered` within the server's own deadline (30 s);
// past this the SDK stops waiting and catches up with history by itself.
const RECOVER_TIMEOUT_MS = 45000;
// Temporary send errors: uniform(0, min(5 s, 0.2 s * 2**attempt)).
const RETRY_BASE_MS = 200;
const RETRY_CAP_MS = 5000;
// After 3004 RATE_LIMITED the backoff starts this many doublings further.
const RATE_LIMITED_OFFSET = 3;
// Requests resent on the next connection when the previous one dropped before
// their answer: the protocol makes each safe to repeat (msg.send by its cid,
// receipts only move forward, the rest are reads or change nothing twice).
const RETRIED = new Set([
  "msg.send",
  "receipt",
  "history",
  "room.list",
  "room.members",
  "room.join",
  "room.invite",
  "room.remove",
  "dm.open",
  "msg.delete",
  "presence.subscribe",
  "presence.unsubscribe",
  "presence.set",
  "call.join",
  "call.mute",
]);
// Close codes in the "do not reconnect" RFC range that a client should still
// retry: 1001 from proxies going away, 1005 a close frame without a code.
const RFC_RECONNECT = new Set([1001, 1005, 1006, 1011, 1012, 1013, 1014]);

/** Every event type a client dispatches (pushes by frame type, then the SDK's own). */
export const EVENT_TYPES = Object.freeze([
  "msg",
  "msg.edited",
  "msg.deleted",
  "receipts",
  "typing",
  "read",
  "member",
  "room",
  "presence",
  "recovered",
  "call.offer",
  "call.participant",
  "call.track",
  "call.speaker",
  "call.restart",
  "call.ended",
  "server-error",
  "unknown",
  "sent",
  "reconnecting",
  "reconnected",
  "resync-failed",
  "closed",
]);

// -- errors -------------------------------------------------------------------

/** Base of every error this SDK raises. */
export class TetherError extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = "TetherError";
  }
}

/** The client is closed for good (or, for RequestInterrupted, this connection dropped). */
export class ConnectionClosed extends TetherError {
  /** @param {number} code @param {string} reason */
  constructor(code, reason) {
    super(`connection closed (${code}${reason ? `: ${reason}` : ""})`);
    this.name = "ConnectionClosed";
    this.code = code;
    this.reason = reason;
    this.reconnect = shouldReconnect(code);
  }
}

/** The token was refused; `expired` is true when a fresh token would do (3006). */
export class AuthenticationError extends ConnectionClosed {
  /** @param {number} code @param {string} reason */
  constructor(code, reason) {
    super(code, reason);
    this.name = "AuthenticationError";
    this.expired = code === 3006;
  }
}

/** The connection dropped before this request's answer; it may or may not have taken effect. */
export class RequestInterrupted extends ConnectionClosed {
  /** @param {number} code @param {string} reason @param {string} request */
  constructor(code, reason, request) {
    super(code, reason);
    this.name = "RequestInterrupted";
    this.request = request;
  }
}

/** The server answered a request with an `error` frame. */
export class RequestError extends TetherError {
  /** @param {number} code @param {string} reason @param {boolean} temporary */
  constructor(code, reason, temporary) {
    super(`request failed: ${code} ${reason}`);
    this.name = "RequestError";
    this.code = code;
    this.reason = reason;
    this.temporary = temporary;
  }
}

/** An answer lacked a documented field: the server does not speak this protocol. */
export class MalformedReply extends TetherError {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = "MalformedReply";
  }
}

/**
 * Whether a close with `code` is worth a reconnect (docs/protocol.md, close codes).
 * @param {number} code
 */
export function shouldReconnect(code) {
  if ((code >= 3000 && code <= 3499) || (code >= 4000 && code <= 4499)) return true;
  return RFC_RECONNECT.has(code);
}

/**
 * Milliseconds before reconnect attempt number `attempt + 1` (0: the first after
 * a drop): full jitter, uniform(0, min(cap, base * 2**attempt)). After 3004 the
 * bound starts three doublings further and the wait is at least half of it.
 * @param {number} attempt
 * @param {number} baseMs
 * @param {number} capMs
 * @param {number | null} [code]
 * @param {() => number} [random]
 */
export function reconnectDelay(attempt, baseMs, capMs, code = null, random = Math.random) {
  if (code === 3004) attempt += RATE_LIMITED_OFFSET;
  const bound = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 64));
  const low = code === 3004 ? bound / 2 : 0;
  return low + random() * (bound - low);
}

/** A fresh client message id: 22 random URL-safe characters. */
export function newCid() {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  const bytes = new Uint8Array(22);
  globalThis.crypto.getRandomValues(bytes);
  let out = "";
  for (const b of bytes) out += alphabet[b & 63];
  return out;
}

// -- decoding the server's maps (camelCase for JS) --------------------------------

/** @param {any} d @param {string} k */
function str(d, k) {
  const v = d?.[k];
  if (typeof v !== "string") throw new MalformedReply(`expected str ${k}`);
  return v;
}
/** @param {any} d @param {string} k */
function int(d, k) {
  const v = d?.[k];
  if (typeof v === "bigint") return v;
  if (!Number.isInteger(v)) throw new MalformedReply(`expected int ${k}`);
  return v;
}
/** @param {any} d @param {string} k */
function optInt(d, k) {
  const v = d?.[k];
  return v === undefined || v === null ? null : int(d, k);
}
/** @param {any} d @param {string} k */
function arr(d, k) {
  const v = d?.[k];
  if (!Array.isArray(v)) throw new MalformedReply(`expected array ${k}`);
  return v;
}

/** @param {any} d */
export function toRoom(d) {
  return {
    id: str(d, "id"),
    kind: str(d, "kind"),
    name: str(d, "name"),
    owner: str(d, "owner"),
    lastSeq: int(d, "last_seq"),
    createdAt: int(d, "created_at"),
  };
}
/** @param {any} d */
function toRoomSummary(d) {
  return { ...toRoom(d), readSeq: int(d, "read_seq"), unread: int(d, "unread") };
}
/** @param {any} d */
export function toMessage(d) {
  return {
    room: str(d, "room"),
    seq: int(d, "seq"),
    cid: str(d, "cid"),
    sender: str(d, "sender"),
    body: d.body ?? null,
    ts: int(d, "ts"),
    editedAt: optInt(d, "edited_at"),
    deleted: d.deleted === true,
  };
}
/** @param {any} d */
function toPresence(d) {
  return { user: str(d, "user"), status: str(d, "status"), devices: int(d, "devices"), lastSeen: optInt(d, "last_seen") };
}
/** @param {any} d */
function toMember(d) {
  return { user: str(d, "user"), role: str(d, "role"), read: int(d, "read"), delivered: int(d, "delivered") };
}
/** @param {any} d */
function toReceipt(d) {
  return { user: str(d, "user"), delivered: int(d, "delivered"), read: int(d, "read") };
}

/**
 * Call maps use camelCase keys in JS (audio_muted → audioMuted); `mids` keeps
 * its keys (they are SDP mids).
 * @param {any} v
 * @returns {any}
 */
function camel(v) {
  if (Array.isArray(v)) return v.map(camel);
  if (v === null || typeof v !== "object" || v instanceof Uint8Array) return v;
  /** @type {Record<string, any>} */
  const out = {};
  for (const [k, item] of Object.entries(v)) {
    const key = k.replace(/_([a-z])/g, (_, c) => c.toUpperCase());
    out[key] = k === "mids" ? item : camel(item);
  }
  return out;
}

/** Decoders of pushes, keyed by frame type: the event's `detail`. */
const PUSHES = /** @type {Record<string, (d: any) => any>} */ ({
  "msg.edited": (d) => ({ room: str(d, "room"), seq: int(d, "seq"), body: d.body ?? null, editedAt: int(d, "edited_at") }),
  "msg.deleted": (d) => ({ room: str(d, "room"), seq: int(d, "seq") }),
  receipts: (d) => ({ room: str(d, "room"), users: arr(d, "users").map(toReceipt) }),
  typing: (d) => ({ room: str(d, "room"), users: arr(d, "users").map(String) }),
  read: (d) => ({ room: str(d, "room"), seq: int(d, "seq"), unread: int(d, "unread") }),
  member: (d) => ({ room: str(d, "room"), user: str(d, "user"), action: str(d, "action") }),
  room: (d) => ({ room: toRoom(d.room), unread: int(d, "unread") }),
  presence: toPresence,
  error: (d) => ({ code: int(d, "code"), reason: String(d.reason ?? ""), temporary: d.temporary === true }),
  "call.offer": (d) => ({ room: str(d, "room"), sdp: str(d, "sdp"), mids: d.mids ?? {} }),
  "call.participant": (d) => camel({ room: str(d, "room"), action: str(d, "action"), participant: d.participant }),
  "call.track": (d) => camel({ room: str(d, "room"), action: str(d, "action"), track: d.track }),
  "call.speaker": (d) => ({ room: str(d, "room"), participant: d.participant ?? null }),
  "call.restart": (d) => ({ room: str(d, "room"), reason: String(d.reason ?? "") }),
  "call.ended": (d) => ({ room: str(d, "room"), reason: String(d.reason ?? "") }),
});

// -- seq bookkeeping (pure, unit-tested) ----------------------------------------------

/** What the client holds of one room's messages (see SeqTracker). */
export class RoomSeqs {
  /** @param {number} contig */
  constructor(contig) {
    /** Every seq up to this one was surfaced, is ours, or predates what we were shown. */
    this.contig = contig;
    /** @type {Set<number>} held seqs above contig, past a gap */
    this.above = new Set();
    /** contig comes from a snapshot that may be ahead of pushes in flight on this connection. */
    this.soft = true;
    /** The room is catching up after a reconnect: only the next seq surfaces. */
    this.holding = false;
    /** @type {Map<number, any>} seq → message waiting for the gap before it */
    this.waiting = new Map();
    /** Catching up must page history at least up to this seq. */
    this.fillUntil = 0;
  }

  /** @param {number} seq */
  has(seq) {
    return this.above.has(seq) || (seq <= this.contig && !this.soft);
  }

  /** @param {number} seq */
  add(seq) {
    if (seq <= this.contig) return;
    if (seq !== this.contig + 1) {
      this.above.add(seq);
      return;
    }
    let contig = seq;
    while (this.above.has(contig + 1)) {
      contig += 1;
      this.above.delete(contig);
    }
    this.contig = contig;
  }

  /** @param {any} message */
  wait(message) {
    this.waiting.set(message.seq, message);
    if (this.waiting.size > MAX_WAITING) {
      const highest = Math.max(...this.waiting.keys());
      this.waiting.delete(highest);
      this.fillUntil = Math.max(this.fillUntil, highest);
    }
  }

  /** Give up on the lowest gap: the position jumps to the next held seq. */
  skipGap() {
    if (this.above.size === 0) return;
    const lowest = Math.min(...this.above);
    this.above.delete(lowest);
    this.contig = lowest - 1;
    this.add(lowest);
  }
}

/** Per room, what the client holds: for dropping duplicates and for `hello.resume`. */
export class SeqTracker {
  /** @param {number} [maxRooms] */
  constructor(maxRooms = MAX_RESUME_ROOMS) {
    /** @type {Map<string, RoomSeqs>} insertion order = least recently active first */
    this.rooms = new Map();
    this.maxRooms = maxRooms;
  }

  /** @param {string} room */
  get(room) {
    return this.rooms.get(room);
  }

  /** The room's state, now the most recently active; a new room starts just below `seq`. */
  /** @param {string} room @param {number} seq */
  touch(room, seq) {
    let state = this.rooms.get(room);
    if (state === undefined) {
      state = new RoomSeqs(seq - 1);
    } else {
      this.rooms.delete(room);
    }
    this.rooms.set(room, state);
    this.evict();
    return state;
  }

  /** Start tracking `room` at `lastSeq` from a snapshot, as the least recently active. */
  /** @param {string} room @param {number} lastSeq */
  seed(room, lastSeq) {
    if (this.rooms.has(room)) return;
    const entries = [...this.rooms];
    this.rooms = new Map([[room, new RoomSeqs(lastSeq)], ...entries]);
    this.evict();
  }

  /** @param {string} room */
  forget(room) {
    this.rooms.delete(room);
  }

  /** `hello.resume`: room → highest seq held without a gap, most active first. */
  resume() {
    /** @type {Record<string, number>} */
    const out = {};
    for (const [room, state] of [...this.rooms].reverse()) out[room] = state.contig;
    return out;
  }

  newConnection() {
    for (const state of this.rooms.values()) {
      state.soft = false;
      state.holding = false;
      state.waiting.clear();
      state.fillUntil = 0;
    }
  }

  evict() {
    while (this.rooms.size > this.maxRooms) {
      const oldest = this.rooms.keys().next().value;
      if (oldest === undefined) break;
      this.rooms.delete(oldest);
    }
  }
}

// -- the client ---------------------------------------------------------------------

/** @param {number} ms */
function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

class Pacer {
  /** @param {number} perSecond */
  constructor(perSecond) {
    this.interval = perSecond > 0 ? 1000 / perSecond : 0;
    this.next = 0;
  }
  async wait() {
    if (!this.interval) return;
    const now = Date.now();
    if (this.next > now) await sleep(this.next - now);
    this.next = Math.max(now, this.next) + this.interval;
  }
}

/** One WebSocket connection and what belongs to it. */
class Link {
  /** @param {WebSocket} ws */
  constructor(ws) {
    this.ws = ws;
    /** @type {Map<number, any>} ref → pending request (or the hello) */
    this.refs = new Map();
    this.nextRef = 1;
    /** @type {ConnectionClosed | null} */
    this.closed = null;
    this.ready = false;
    this.lastFrame = Date.now();
    /** @type {Set<string>} rooms named in hello.resume that have not answered recovered */
    this.awaiting = new Set();
    /** @type {ReturnType<typeof setTimeout>[]} a bounded few: handshake, recover deadline */
    this.timers = [];
    /** @type {ReturnType<typeof setTimeout> | null} the silence watchdog, re-armed in place */
    this.watchdog = null;
    /** @type {((frame: any) => void) | null} */
    this.onHello = null;
    /** @type {((err: ConnectionClosed) => void) | null} */
    this.onEnd = null;
  }

  newRef() {
    // Refs wrap at 2**32 and skip those still in flight.
    for (;;) {
      const ref = this.nextRef;
      this.nextRef = ref >= 0xffffffff ? 0 : ref + 1;
      if (!this.refs.has(ref)) return ref;
    }
  }
}

/**
 * @typedef {object} ClientOptions
 * @property {string} [token] the JWT (or `dev:<user>` on a --dev server)
 * @property {() => (string | Promise<string>)} [tokenProvider] called for the first token when `token` is absent, and after 3006 TOKEN_EXPIRED
 * @property {string} [device] a stable id of this browser/installation
 * @property {string} [clientName]
 * @property {boolean} [reconnect] default true
 * @property {number} [backoffBaseMs] default 500
 * @property {number} [backoffCapMs] default 30000
 * @property {number | null} [maxReconnectAttempts] default null (forever)
 * @property {number} [connectTimeoutMs] default 10000
 * @property {number} [maxPending] requests waiting for an answer or a connection, default 1000
 * @property {typeof WebSocket} [WebSocket] the WebSocket class (default: globalThis.WebSocket)
 * @property {{session?: string, device?: string, rooms?: Record<string, number>}} [restore] resume state from `snapshot()` of an earlier client (tab hand-over)
 */

/**
 * A tether client: an EventTarget whose events are named after the pushes
 * (`msg`, `msg.edited`, `typing`, ...) plus the SDK's own (`reconnecting`,
 * `reconnected`, `recovered`, `resync-failed`, `sent`, `closed`). Each event
 * is a CustomEvent whose `detail` is the decoded payload.
 */
export class TetherClient extends EventTarget {
  /**
   * @param {string} url the server's WebSocket URL, e.g. "wss://chat.example.org/ws"
   * @param {ClientOptions} [options]
   */
  constructor(url, options = {}) {
    super();
    this.url = url;
    this.options = options;
    this._token = options.token ?? null;
    this._WS = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this._WS !== "function") throw new TypeError("no WebSocket implementation: pass options.WebSocket");
    this._device = options.device ?? options.restore?.device ?? null;
    this._clientName = options.clientName ?? CLIENT_NAME;
    this._reconnect = options.reconnect ?? true;
    this._baseMs = options.backoffBaseMs ?? 500;
    this._capMs = options.backoffCapMs ?? 30000;
    this._maxAttempts = options.maxReconnectAttempts ?? null;
    this._connectTimeoutMs = options.connectTimeoutMs ?? 10000;
    this._maxPending = options.maxPending ?? 1000;
    /** @type {any} the latest welcome (camelCase) */
    this.welcome = null;
    this._session = options.restore?.session ?? null;
    /** @type {Link | null} */
    this._link = null;
    /** @type {ConnectionClosed | null} */
    this._closed = null;
    this._started = false;
    this._leaving = false;
    /** @type {Set<any>} every request not yet settled */
    this._requests = new Set();
    /** @type {Map<string, any>} room\0cid → pending msg.send */
    this._sends = new Map();
    this._seqs = new SeqTracker();
    for (const [room, seq] of Object.entries(options.restore?.rooms ?? {})) this._seqs.seed(room, seq);
    /** @type {Set<string>} users followed with subscribePresence */
    this._presence = new Set();
    this._idle = false;
    /** @type {Map<string, {delivered?: number, read?: number}>} receipts waiting for a connection */
    this._receipts = new Map();
    /** @type {Map<string, {delivered?: number, read?: number, at: number}>} ref-less receipts recently fired */
    this._fired = new Map();
    this._attempt = 0;
    this._upSince = 0;
    /** @type {(() => void) | null} wakes a backoff wait when the client closes */
    this._wake = null;
  }

  /** The user id (after the first welcome). */
  get user() {
    return this.welcome?.user ?? null;
  }
  /** True while a connection is open and ready. */
  get connected() {
    return this._link !== null && this._link.ready && this._link.closed === null;
  }
  /** null until the client is closed for good, then why. */
  get closed() {
    return this._closed;
  }

  /**
   * Listen to one event type; returns a function that removes the listener.
   * @param {string} type
   * @param {(detail: any) => void} fn
   */
  on(type, fn) {
    /** @param {Event} ev */
    const listener = (ev) => fn(/** @type {CustomEvent} */ (ev).detail);
    this.addEventListener(type, listener);
    return () => this.removeEventListener(type, listener);
  }

  /** @param {string} type @param {any} detail */
  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /**
   * Open the first connection; resolves with the welcome. The first connection
   * is not retried: a failure rejects (AuthenticationError, ConnectionClosed).
   */
  async open() {
    if (this._started) throw new TetherError("open() was already called");
    this._started = true;
    try {
      if (this._token === null) await this._refreshToken();
      const link = await this._connectOnce(this._session !== null);
      this._attach(link, false);
    } catch (err) {
      const closed = err instanceof ConnectionClosed ? err : new ConnectionClosed(1006, errorText(err));
      this._finish(closed);
      throw err;
    }
    return this.welcome;
  }

  /**
   * Resume state for another client taking over this connection (tab hand-over):
   * the session and, per room, the highest seq held without a gap.
   */
  snapshot() {
    return { session: this._session ?? undefined, device: this._device ?? this.welcome?.device, rooms: this._seqs.resume() };
  }

  // -- requests -------------------------------------------------------------------

  /**
   * Send a request frame and wait for its reply's `data` (raw, snake_case).
   * Requests safe to repeat are resent on the next connection after a drop;
   * others reject with RequestInterrupted.
   * @param {string} type
   * @param {Record<string, any>} [fields]
   * @returns {Promise<any>}
   */
  request(type, fields = {}) {
    if (this._closed) return Promise.reject(this._closed);
    if (this._requests.size >= this._maxPending) {
      return Promise.reject(new TetherError(`more than ${this._maxPending} requests pending`));
    }
    return new Promise((resolve, reject) => {
      const pending = { type, fields, resolve, reject, link: /** @type {Link | null} */ (null), ref: -1, done: false };
      this._requests.add(pending);
      if (type === "msg.send") this._sends.set(`${fields.room}\0${fields.cid}`, pending);
      const link = this._link;
      if (link !== null && link.ready && link.closed === null) this._transmit(link, pending);
      // Otherwise queued: sent in order once reconnected.
    });
  }

  /** @param {any} pending @param {any} outcome @param {boolean} ok */
  _settle(pending, outcome, ok) {
    if (pending.done) return;
    pending.done = true;
    this._requests.delete(pending);
    if (pending.type === "msg.send") {
      const key = `${pending.fields.room}\0${pending.fields.cid}`;
      if (this._sends.get(key) === pending) this._sends.delete(key);
    }
    if (pending.link !== null && pending.ref >= 0) pending.link.refs.delete(pending.ref);
    if (ok) pending.resolve(outcome);
    else pending.reject(outcome);
  }

  /** @param {Link} link @param {any} pending */
  _transmit(link, pending) {
    const ref = link.newRef();
    pending.link = link;
    pending.ref = ref;
    link.refs.set(ref, pending);
    this._sendFrame(link, { t: pending.type, ref, ...pending.fields });
  }

  /** @param {Link} link @param {Record<string, any>} frame */
  _sendFrame(link, frame) {
    if (link.closed !== null) return false;
    try {
      link.ws.send(encode(frame));
      return true;
    } catch (err) {
      this._endLink(link, new ConnectionClosed(1006, `send failed: ${err}`));
      return false;
    }
  }

  /** Fire-and-forget: true when it went out on a ready connection. @param {Record<string, any>} frame */
  _fire(frame) {
    if (this._closed) throw this._closed;
    const link = this._link;
    if (link === null || !link.ready || link.closed !== null) return false;
    return this._sendFrame(link, frame);
  }

  // presence

  /**
   * Follow users' presence; resolves with their current states.
   * @param {string[]} users
   */
  async subscribePresence(users) {
    if (!Array.isArray(users)) throw new TypeError("users must be an array");
    const data = await this.request("presence.subscribe", { users });
    for (const u of users) this._presence.add(u);
    return arr(data, "users").map(toPresence);
  }

  /** @param {string[]} users */
  async unsubscribePresence(users) {
    if (!Array.isArray(users)) throw new TypeError("users must be an array");
    await this.request("presence.unsubscribe", { users });
    for (const u of users) this._presence.delete(u);
  }

  /** Report this device idle (true) or active (false); restored after a reconnect. @param {boolean} idle */
  async setIdle(idle) {
    this._idle = idle;
    await this.request("presence.set", { status: idle ? "idle" : "active" });
  }

  // rooms

  /**
   * @param {string} name
   * @param {{kind?: "public" | "private", members?: string[]}} [opts]
   */
  async createRoom(name, opts = {}) {
    const fields = { name, kind: opts.kind ?? "private", members: opts.members ?? [] };
    if (!Array.isArray(fields.members)) throw new TypeError("members must be an array");
    const data = await this.request("room.create", fields);
    return toRoom(data.room);
  }
  /** @param {string} roomId */
  async joinRoom(roomId) {
    return toRoom((await this.request("room.join", { room: roomId })).room);
  }
  /** @param {string} roomId */
  async leaveRoom(roomId) {
    await this.request("room.leave", { room: roomId });
  }
  /** @param {string} roomId @param {string} user */
  async invite(roomId, user) {
    await this.request("room.invite", { room: roomId, user });
  }
  /** @param {string} roomId @param {string} user */
  async removeMember(roomId, user) {
    await this.request("room.remove", { room: roomId, user });
  }
  async listRooms() {
    return arr(await this.request("room.list"), "rooms").map(toRoomSummary);
  }
  /** @param {string} roomId */
  async members(roomId) {
    return arr(await this.request("room.members", { room: roomId }), "members").map(toMember);
  }
  /** @param {string} user */
  async openDm(user) {
    return toRoom((await this.request("dm.open", { user })).room);
  }

  // messages

  /**
   * Post a message. Temporary errors are retried with the same cid, and so is
   * a send whose connection dropped before its answer: it is stored once.
   * @param {string} roomId
   * @param {any} body any msgpack value but null/undefined
   * @param {{cid?: string, retryTemporary?: number}} [opts]
   */
  async send(roomId, body, opts = {}) {
    if (body === null || body === undefined) throw new TypeError("a message body cannot be null");
    const cid = opts.cid ?? newCid();
    if (typeof cid !== "string" || cid.length < 1 || cid.length > MAX_CID_CHARS) {
      throw new RangeError(`cid must have 1..${MAX_CID_CHARS} characters`);
    }
    const retries = opts.retryTemporary ?? 3;
    let attempt = 0;
    for (;;) {
      try {
        const data = await this.request("msg.send", { room: roomId, cid, body });
        /** @type {{room: string, seq: number, ts: number, dup: boolean, cid: string, body?: unknown}} */
        const result = { room: roomId, seq: int(data, "seq"), ts: int(data, "ts"), dup: data.dup === true, cid };
        if (data.body !== undefined) result.body = data.body;
        this._emit("sent", {
          room: roomId,
          seq: result.seq,
          cid,
          sender: this.user,
          body: data.body !== undefined ? data.body : body,
          ts: result.ts,
          editedAt: null,
          deleted: false,
          dup: result.dup,
        });
        return result;
      } catch (err) {
        if (!(err instanceof RequestError) || !err.temporary || attempt >= retries) throw err;
        await sleep(Math.random() * Math.min(RETRY_CAP_MS, RETRY_BASE_MS * 2 ** attempt));
        attempt += 1;
      }
    }
  }

  /** @param {string} roomId @param {number} seq @param {any} body */
  async edit(roomId, seq, body) {
    if (body === null || body === undefined) throw new TypeError("a message body cannot be null (use delete)");
    return int(await this.request("msg.edit", { room: roomId, seq, body }), "edited_at");
  }
  /** @param {string} roomId @param {number} seq */
  async delete(roomId, seq) {
    await this.request("msg.delete", { room: roomId, seq });
  }

  /**
   * A page of messages in ascending seq: the latest `limit`, or just before
   * `before`, or just after `after`.
   * @param {string} roomId
   * @param {{before?: number, after?: number, limit?: number}} [opts]
   */
  async history(roomId, opts = {}) {
    const { before, after } = opts;
    const limit = opts.limit ?? 50;
    if (before !== undefined && after !== undefined) throw new RangeError("give at most one of before and after");
    if (!Number.isInteger(limit) || limit < 1 || limit > MAX_HISTORY_LIMIT) throw new RangeError("limit must be 1..500");
    const data = await this.request("history", { room: roomId, limit, before, after });
    return { messages: arr(data, "messages").map(toMessage), more: data.more === true };
  }

  /**
   * Report delivered/read positions. `wait: false` sends without a ref (no
   * answer); while reconnecting such receipts are merged per room and sent
   * once connected again.
   * @param {string} roomId
   * @param {{delivered?: number, read?: number, wait?: boolean}} opts
   */
  async ack(roomId, opts) {
    const { delivered, read } = opts;
    if (delivered === undefined && read === undefined) throw new RangeError("give delivered and/or read");
    const fields = { room: roomId, delivered, read };
    if (opts.wait ?? true) {
      await this.request("receipt", fields);
      return;
    }
    if (this._fire({ t: "receipt", ...fields })) {
      const prev = this._fired.get(roomId) ?? { at: 0 };
      this._fired.delete(roomId);
      this._fired.set(roomId, mergePositions(prev, delivered, read, Date.now()));
      if (this._fired.size > MAX_RESUME_ROOMS) this._fired.delete(this._fired.keys().next().value ?? "");
    } else {
      this._queueReceipt(roomId, delivered, read);
    }
  }

  /** @param {string} roomId @param {number | undefined} delivered @param {number | undefined} read */
  _queueReceipt(roomId, delivered, read) {
    const prev = this._receipts.get(roomId) ?? {};
    this._receipts.delete(roomId);
    const merged = mergePositions(prev, delivered, read, 0);
    this._receipts.set(roomId, { delivered: merged.delivered, read: merged.read });
    if (this._receipts.size > MAX_RESUME_ROOMS) this._receipts.delete(this._receipts.keys().next().value ?? "");
  }

  /** Typing (resend every ~3 s) or stopped; dropped while reconnecting. @param {string} roomId */
  typing(roomId, typing = true) {
    this._fire({ t: "typing", room: roomId, typing });
  }

  /** An application ping (the server answers pong); a no-op while reconnecting. */
  ping() {
    this._fire({ t: "ping", n: 0 });
  }

  // calls (docs/protocol.md, calls): thin signaling; media is the application's (RTCPeerConnection)

  /** @param {string} roomId */
  async joinCall(roomId) {
    return camel(await this.request("call.join", { room: roomId }));
  }
  /** @param {string} roomId */
  async leaveCall(roomId) {
    await this.request("call.leave", { room: roomId });
  }
  /** The publisher offer; resolves with {sdp: answer, tracks}. @param {string} roomId @param {string} sdp */
  async publishCall(roomId, sdp) {
    return camel(await this.request("call.publish", { room: roomId, sdp }));
  }
  /** The answer to the last `call.offer`. @param {string} roomId @param {string} sdp */
  async answerCall(roomId, sdp) {
    await this.request("call.answer", { room: roomId, sdp });
  }
  /**
   * Trickle an ICE candidate (null: end of candidates); fire and forget.
   * @param {string} roomId
   * @param {"pub" | "sub"} pc
   * @param {{candidate?: string | null, sdpMid?: string | null, sdpMLineIndex?: number | null} | null} candidate
   */
  sendCallIce(roomId, pc, candidate) {
    this._fire({
      t: "call.ice",
      room: roomId,
      pc,
      candidate: candidate?.candidate || null,
      sdp_mid: candidate?.sdpMid ?? undefined,
      sdp_mline_index: candidate?.sdpMLineIndex ?? undefined,
    });
  }
  /** @param {string} roomId @param {"audio" | "video"} kind @param {boolean} muted */
  async muteCall(roomId, kind, muted) {
    await this.request("call.mute", { room: roomId, kind, muted });
  }
  /** The size at which a track is shown (the server picks a simulcast layer). @param {string} roomId @param {string} track @param {number} width @param {number} height */
  setCallQuality(roomId, track, width, height) {
    this._fire({ t: "call.quality", room: roomId, track, width, height });
  }
  /** @param {string} roomId */
  async restartCall(roomId) {
    await this.request("call.restart", { room: roomId });
  }

  // leaving

  /** The user signs out: the server counts this device offline at once; the client closes. */
  async bye() {
    const link = this._link;
    if (link !== null && link.closed === null && link.ready) {
      this._leaving = true;
      this._sendFrame(link, { t: "bye" });
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, 2000);
        link.onEnd = () => {
          clearTimeout(timer);
          resolve(undefined);
        };
      });
    }
    this.close();
  }

  /** Close for good (no reconnect); pending requests reject with ConnectionClosed. */
  close() {
    this._leaving = true;
    const closed = new ConnectionClosed(1000, "closed by the client");
    const link = this._link;
    if (link !== null) this._endLink(link, closed);
    this._finish(closed);
  }

  // -- internals: connections ---------------------------------------------------

  async _refreshToken() {
    const provider = this.options.tokenProvider;
    if (!provider) throw new AuthenticationError(3006, "no token and no tokenProvider");
    const token = await provider();
    if (typeof token !== "string" || !token) throw new AuthenticationError(3006, "tokenProvider gave no token");
    this._token = token;
  }

  /**
   * Open a socket and complete the handshake.
   * @param {boolean} resume send the session and resume positions
   * @returns {Promise<Link>}
   */
  _connectOnce(resume) {
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new this._WS(this.url, [SUBPROTOCOL]);
      } catch (err) {
        reject(new ConnectionClosed(1006, `cannot open: ${err}`));
        return;
      }
      ws.binaryType = "arraybuffer";
      const link = new Link(ws);
      const timer = setTimeout(() => {
        this._endLink(link, new ConnectionClosed(1006, "handshake timed out"));
      }, this._connectTimeoutMs);
      link.timers.push(timer);
      /** @type {any} */
      let helloError = null;
      link.onEnd = (closed) => {
        clearTimeout(timer);
        // A refused token: the hello's error, then a close (3502, or 3006 when expired).
        if (closed.code === 3502 || closed.code === 3006) {
          reject(new AuthenticationError(closed.code, closed.reason || String(helloError?.reason ?? "")));
        } else {
          reject(closed);
        }
      };
      ws.onmessage = (ev) => this._onMessage(link, ev.data);
      ws.onclose = (ev) => this._endLink(link, new ConnectionClosed(ev.code || 1006, ev.reason || ""));
      ws.onerror = () => {
        /* the close event follows and says why */
      };
      ws.onopen = () => {
        if (ws.protocol && ws.protocol !== SUBPROTOCOL) {
          this._endLink(link, new ConnectionClosed(1002, `server chose subprotocol ${ws.protocol}`));
          return;
        }
        /** @type {Record<string, any>} */
        const fields = { token: this._token, client: this._clientName };
        const device = this._device ?? this.welcome?.device;
        if (device) fields.device = device; // the same device: a quick reconnect is invisible
        if (resume) {
          this._seqs.newConnection();
          if (this._session) fields.session = this._session;
          const rooms = this._seqs.resume();
          if (Object.keys(rooms).length > 0) {
            fields.resume = rooms;
            for (const room of Object.keys(rooms)) {
              const state = this._seqs.get(room);
              if (state) state.holding = true;
              link.awaiting.add(room);
            }
          }
        }
        const ref = link.newRef();
        link.refs.set(ref, { hello: true });
        link.onHello = (frame) => {
          if (frame.t === "welcome") {
            clearTimeout(timer);
            link.onEnd = null;
            try {
              this.welcome = toWelcome(frame);
            } catch (err) {
              this._endLink(link, new ConnectionClosed(1002, "malformed welcome"));
              reject(err);
              return;
            }
            this._session = this.welcome.session;
            resolve(link);
          } else {
            // Refused: the server closes next (3502/3006) and the close says why.
            helloError = frame;
          }
        };
        this._sendFrame(link, { t: "hello", ref, ...fields });
      };
    });
  }

  /**
   * A connection completed its handshake: it becomes the client's link.
   * @param {Link} link
   * @param {boolean} reconnected
   */
  _attach(link, reconnected) {
    this._link = link;
    this._upSince = Date.now();
    link.onEnd = (closed) => this._linkLost(link, closed);
    const deadline = this.welcome.heartbeatMs + this.welcome.timeoutMs;
    const watch = () => {
      if (link.closed !== null) return;
      const silent = Date.now() - link.lastFrame;
      if (silent > deadline) {
        // No close handshake with a server that does not answer.
        this._endLink(link, new ConnectionClosed(1006, "server heartbeat timeout"));
        return;
      }
      link.watchdog = setTimeout(watch, deadline - silent + 10);
    };
    link.watchdog = setTimeout(watch, deadline);
    if (link.awaiting.size > 0) {
      link.timers.push(
        setTimeout(() => {
          for (const room of [...link.awaiting].sort()) void this._fill(link, room, null, null);
          link.awaiting.clear();
        }, RECOVER_TIMEOUT_MS),
      );
    }
    void this._restore(link, reconnected);
  }

  /**
   * Before a connection is ready: idle state, queued receipts, queued requests
   * in order, paced to the server's max_frames_per_s.
   * @param {Link} link
   * @param {boolean} reconnected
   */
  async _restore(link, reconnected) {
    const pace = new Pacer(Number(this.welcome.limits?.max_frames_per_s ?? 0));
    if (this._idle) {
      await pace.wait();
      this._sendFrame(link, { t: "presence.set", status: "idle" });
    }
    while (this._receipts.size > 0 && link.closed === null) {
      // Oldest first; receipts queued meanwhile are picked up by the loop.
      const [room, positions] = /** @type {[string, {delivered?: number, read?: number}]} */ (
        this._receipts.entries().next().value
      );
      this._receipts.delete(room);
      await pace.wait();
      this._sendFrame(link, { t: "receipt", room, ...positions });
    }
    for (;;) {
      if (link.closed !== null) return;
      const queued = [...this._requests].filter((p) => p.link === null && !p.done);
      if (queued.length === 0) break;
      for (const pending of queued) {
        if (pending.link === null && !pending.done && link.closed === null) {
          await pace.wait();
          if (link.closed === null) this._transmit(link, pending);
        }
      }
    }
    link.ready = true;
    if (!reconnected) return;
    this._emit("reconnected", { resumed: this.welcome.resumed });
    if (!this.welcome.resumed && this._presence.size > 0) await this._resubscribe();
  }

  async _resubscribe() {
    const users = [...this._presence].sort();
    for (let i = 0; i < users.length; i += MAX_SUBSCRIBE_USERS) {
      const chunk = users.slice(i, i + MAX_SUBSCRIBE_USERS);
      /** @type {any[]} */
      let snapshots = [];
      try {
        snapshots = await this.subscribePresence(chunk);
      } catch (err) {
        if (!(err instanceof RequestError) || err.code !== 104) {
          this._emit("resync-failed", { step: "presence", room: null, error: err });
          continue;
        }
        // Someone no longer shares a room with us: one by one, dropping those refused.
        for (const user of chunk) {
          try {
            snapshots.push(...(await this.subscribePresence([user])));
          } catch {
            this._presence.delete(user);
          }
        }
      }
      for (const snapshot of snapshots) this._emit("presence", snapshot);
    }
  }

  /**
   * End a connection (idempotent): closes the socket and tells its owner.
   * @param {Link} link
   * @param {ConnectionClosed} closed
   */
  _endLink(link, closed) {
    if (link.closed !== null) return;
    link.closed = closed;
    for (const t of link.timers) clearTimeout(t);
    link.timers = [];
    if (link.watchdog !== null) clearTimeout(link.watchdog);
    try {
      link.ws.onmessage = null;
      link.ws.onclose = null;
      if (link.ws.readyState <= 1) link.ws.close(1000);
    } catch {
      /* already closing */
    }
    const onEnd = link.onEnd;
    link.onEnd = null;
    if (onEnd) onEnd(closed);
  }

  /**
   * The client's connection dropped: requeue or interrupt requests, then
   * reconnect or finish.
   * @param {Link} link
   * @param {ConnectionClosed} closed
   */
  _linkLost(link, closed) {
    if (this._link === link) this._link = null;
    for (const pending of [...this._requests]) {
      if (pending.link !== link || pending.done) continue;
      pending.link = null;
      pending.ref = -1;
      if (!RETRIED.has(pending.type)) {
        this._settle(pending, new RequestInterrupted(closed.code, closed.reason, pending.type), false);
      }
    }
    // Ref-less receipts of the last seconds may not have been stored: resend.
    const now = Date.now();
    for (const [room, p] of this._fired) {
      if (now - p.at <= RECEIPT_REPLAY_MS) this._queueReceipt(room, p.delivered, p.read);
    }
    this._fired.clear();
    if (this._leaving || this._closed) {
      this._finish(closed);
      return;
    }
    const canRetry = closed.code === 3006 ? Boolean(this.options.tokenProvider) : shouldReconnect(closed.code);
    if (!this._reconnect || !canRetry) {
      this._finish(closed.code === 3502 || closed.code === 3006 ? new AuthenticationError(closed.code, closed.reason) : closed);
      return;
    }
    if (now - this._upSince >= this._capMs) this._attempt = 0;
    void this._reconnectLoop(closed);
  }

  /** @param {ConnectionClosed} closed */
  async _reconnectLoop(closed) {
    let last = closed;
    for (;;) {
      if (this._closed) return;
      if (this._maxAttempts !== null && this._attempt >= this._maxAttempts) {
        this._finish(last);
        return;
      }
      const delay = reconnectDelay(this._attempt, this._baseMs, this._capMs, last.code);
      this._attempt += 1;
      this._emit("reconnecting", { attempt: this._attempt, delay, code: last.code, reason: last.reason });
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, delay);
        this._wake = () => {
          clearTimeout(timer);
          resolve(undefined);
        };
      });
      this._wake = null;
      if (this._closed) return;
      if (last.code === 3006) {
        try {
          await this._refreshToken();
        } catch (err) {
          const auth = new AuthenticationError(3006, `tokenProvider failed: ${errorText(err)}`);
          auth.cause = err;
          this._finish(auth);
          return;
        }
      }
      try {
        const link = await this._connectOnce(true);
        if (this._closed) {
          this._endLink(link, this._closed);
          return;
        }
        this._attach(link, true);
        return;
      } catch (err) {
        last = err instanceof ConnectionClosed ? err : new ConnectionClosed(1006, errorText(err));
        const canRetry = last.code === 3006 ? Boolean(this.options.tokenProvider) : shouldReconnect(last.code);
        if (!canRetry) {
          this._finish(last);
          return;
        }
      }
    }
  }

  /** @param {ConnectionClosed} closed */
  _finish(closed) {
    if (this._closed) return;
    this._closed = closed;
    if (this._wake) this._wake();
    for (const pending of [...this._requests]) this._settle(pending, closed, false);
    this._emit("closed", closed);
  }

  // -- internals: receiving ------------------------------------------------------

  /** @param {Link} link @param {any} data */
  _onMessage(link, data) {
    if (link.closed !== null) return;
    link.lastFrame = Date.now();
    if (typeof data === "string") return; // the protocol is binary-only
    let frame;
    try {
      frame = decode(data instanceof ArrayBuffer ? new Uint8Array(data) : data);
      if (frame === null || typeof frame !== "object" || Array.isArray(frame) || frame instanceof Map) {
        throw new MalformedReply("frame is not a map");
      }
      this._onFrame(link, frame);
    } catch (err) {
      // Not msgpack, or a push without its documented fields: nothing this
      // server sends can be trusted. 1002 ends the client (no reconnect).
      this._endLink(link, new ConnectionClosed(1002, `undecodable frame from server: ${errorText(err)}`));
    }
  }

  /** @param {Link} link @param {any} frame */
  _onFrame(link, frame) {
    const t = frame.t;
    const ref = frame.ref;
    if ((t === "reply" || t === "error" || t === "welcome") && ref !== undefined && ref !== null) {
      const pending = link.refs.get(ref);
      link.refs.delete(ref);
      if (pending === undefined) return;
      if (pending.hello) {
        if (link.onHello) link.onHello(frame);
        return;
      }
      this._answered(pending, frame);
      return;
    }
    switch (t) {
      case "ping":
        this._sendFrame(link, { t: "pong", n: frame.n ?? 0 });
        return;
      case "pong":
        return;
      case "msg":
        this._deliver(link, toMessage(frame), true);
        return;
      case "recovered":
        this._onRecovered(link, {
          room: str(frame, "room"),
          complete: frame.complete === true,
          replayed: int(frame, "replayed"),
          head: int(frame, "head"),
          first: optInt(frame, "first"),
          code: optInt(frame, "code"),
        });
        return;
      default:
        break;
    }
    const decodePush = typeof t === "string" ? PUSHES[t] : undefined;
    if (decodePush === undefined) {
      this._emit("unknown", { type: t, data: frame });
      return;
    }
    const detail = decodePush(frame);
    if ((t === "msg.edited" || t === "msg.deleted") && this._amend(t, detail)) return;
    if (t === "room") this._seqs.seed(detail.room.id, detail.room.lastSeq);
    else if (t === "member" && (detail.action === "left" || detail.action === "removed") && detail.user === this.user) {
      this._seqs.forget(detail.room);
    }
    this._emit(t === "error" ? "server-error" : t, detail);
  }

  /** @param {any} pending @param {any} frame */
  _answered(pending, frame) {
    if (frame.t === "error") {
      this._settle(pending, new RequestError(Number(frame.code), String(frame.reason ?? ""), frame.temporary === true), false);
      return;
    }
    const data = frame.data !== null && typeof frame.data === "object" ? frame.data : {};
    try {
      this._learn(pending, data);
    } catch {
      // Malformed: the caller's decoding raises MalformedReply.
    }
    this._settle(pending, data, true);
  }

  /** @param {any} pending @param {any} data */
  _learn(pending, data) {
    const { type, fields } = pending;
    if (type === "msg.send") {
      this._holdOwn(fields.room, int(data, "seq"));
    } else if (type === "room.create" || type === "room.join" || type === "dm.open") {
      const room = toRoom(data.room);
      this._seqs.seed(room.id, room.lastSeq);
    } else if (type === "room.list") {
      for (const item of arr(data, "rooms")) this._seqs.seed(str(item, "id"), int(item, "last_seq"));
    } else if (type === "room.leave") {
      this._seqs.forget(fields.room);
    }
  }

  // -- internals: messages in order, once ------------------------------------------

  /** @param {string} room @param {number} seq */
  _holdOwn(room, seq) {
    const state = this._seqs.touch(room, seq);
    state.add(seq);
    state.waiting.delete(seq);
    if (state.holding && state.waiting.size > 0) this._releaseContiguous(state);
  }

  /**
   * Surface `message` unless it already was; in seq order while its room recovers.
   * @param {Link | null} link
   * @param {any} message
   * @param {boolean} pushed a `msg` push (else a history page filling a gap)
   */
  _deliver(link, message, pushed) {
    let state;
    if (pushed) state = this._seqs.touch(message.room, message.seq);
    else {
      state = this._seqs.get(message.room);
      if (state === undefined) return;
    }
    const seq = message.seq;
    if (state.has(seq)) return;
    if (pushed && seq > state.contig) state.soft = false; // pushes come in seq order
    if (this._ownSendSeen(message)) {
      state.add(seq);
      state.waiting.delete(seq);
    } else if (state.holding && seq > state.contig + 1) {
      state.wait(message);
      return;
    } else {
      state.add(seq);
      state.waiting.delete(seq);
      this._emit("msg", message);
    }
    if (state.holding) this._releaseContiguous(state);
    else if (state.above.size > MAX_AHEAD && link !== null) this._repair(link, message.room, state);
  }

  /** A replayed copy of one of our sends still waiting for its answer completes it. @param {any} message */
  _ownSendSeen(message) {
    if (message.sender !== this.user) return false;
    const pending = this._sends.get(`${message.room}\0${message.cid}`);
    if (pending === undefined || pending.done) return false;
    this._settle(pending, { seq: message.seq, ts: message.ts, dup: true }, true);
    return true;
  }

  /** @param {RoomSeqs} state */
  _releaseContiguous(state) {
    for (;;) {
      const message = state.waiting.get(state.contig + 1);
      if (message === undefined) break;
      state.waiting.delete(message.seq);
      state.add(message.seq);
      this._emit("msg", message);
    }
    for (const seq of [...state.waiting.keys()]) if (state.has(seq)) state.waiting.delete(seq);
  }

  /** The room's catch-up is over: surface what waits, in seq order, gaps or not. @param {RoomSeqs} state */
  _releaseAll(state) {
    this._releaseContiguous(state);
    for (const seq of [...state.waiting.keys()].sort((a, b) => a - b)) {
      const message = state.waiting.get(seq);
      state.waiting.delete(seq);
      if (!state.has(seq)) {
        state.add(seq);
        this._emit("msg", message);
      }
    }
    state.holding = false;
    state.fillUntil = 0;
  }

  /** Apply an edit or deletion to a waiting message. @param {string} type @param {any} event */
  _amend(type, event) {
    const state = this._seqs.get(event.room);
    if (state === undefined || !state.holding) return false;
    const message = state.waiting.get(event.seq);
    if (message === undefined) return false;
    const amended =
      type === "msg.edited"
        ? { ...message, body: event.body, editedAt: event.editedAt }
        : { ...message, body: null, deleted: true };
    state.waiting.set(event.seq, amended);
    return true;
  }

  /** Too many seqs held past a gap on a live connection: page the gap. @param {Link} link @param {string} room @param {RoomSeqs} state */
  _repair(link, room, state) {
    if (state.above.size === 0) return;
    state.holding = true;
    state.fillUntil = Math.max(...state.above);
    void this._fill(link, room, state.fillUntil, null);
  }

  /** @param {Link} link @param {any} event */
  _onRecovered(link, event) {
    link.awaiting.delete(event.room);
    const state = this._seqs.get(event.room);
    if (event.code === 120 || event.code === 121 || state === undefined) {
      this._seqs.forget(event.room); // no longer ours: nothing to resume
      this._emit("recovered", event);
    } else if (event.complete && event.code === null) {
      this._releaseAll(state);
      this._emit("recovered", event);
    } else {
      // Incomplete: page the older part before `first`; not resumed (108): all after our position.
      let until = null;
      if (event.code === null) until = event.first !== null ? event.first - 1 : event.head;
      void this._fill(link, event.room, until, event);
    }
  }

  /**
   * Page a room's missed messages from history, then release it (and report).
   * @param {Link} link @param {string} room @param {number | null} until @param {any} recovered
   */
  async _fill(link, room, until, recovered) {
    let failure = null;
    try {
      await this._pageGap(link, room, until);
    } catch (err) {
      failure = err;
    }
    const state = this._seqs.get(room);
    if (state !== undefined) {
      if (failure !== null) while (state.above.size > MAX_AHEAD) state.skipGap();
      this._releaseAll(state);
    }
    if (failure !== null) this._emit("resync-failed", { step: "history", room, error: failure });
    if (recovered !== null) this._emit("recovered", recovered);
  }

  /** `history` forward from the room's position up to `until` (null: to the end). @param {Link} link @param {string} room @param {number | null} until */
  async _pageGap(link, room, until) {
    for (;;) {
      let state = this._seqs.get(room);
      if (state === undefined) return;
      const target = Math.max(until ?? 0, state.fillUntil);
      if (until !== null && state.contig >= target) return;
      const start = state.contig;
      const page = await this.history(room, { after: start, limit: MAX_HISTORY_LIMIT });
      for (const message of page.messages) this._deliver(null, message, false);
      state = this._seqs.get(room);
      if (state === undefined || state.contig === start) return;
      if (!page.more && state.contig >= state.fillUntil) return;
    }
  }
}

/** @param {unknown} err */
function errorText(err) {
  return err instanceof Error ? err.message : String(err);
}

/** @param {{delivered?: number, read?: number}} prev @param {number | undefined} delivered @param {number | undefined} read @param {number} at */
function mergePositions(prev, delivered, read, at) {
  /** @param {number | undefined} a @param {number | undefined} b */
  const max = (a, b) => (a === undefined ? b : b === undefined ? a : Math.max(a, b));
  return { delivered: max(prev.delivered, delivered), read: max(prev.read, read), at };
}

/** @param {any} d */
function toWelcome(d) {
  return {
    session: str(d, "session"),
    user: str(d, "user"),
    name: String(d.name ?? ""),
    device: str(d, "device"),
    heartbeatMs: int(d, "heartbeat_ms"),
    timeoutMs: int(d, "timeout_ms"),
    server: String(d.server ?? ""),
    limits: d.limits ?? {},
    resumed: d.resumed === true,
  };
}

/**
 * Connect: create a client and open its first connection.
 * @param {string} url
 * @param {ClientOptions} [options]
 * @returns {Promise<TetherClient>}
 */
export async function connect(url, options = {}) {
  const client = new TetherClient(url, options);
  await client.open();
  return client;
}
