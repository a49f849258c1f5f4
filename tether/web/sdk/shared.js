// One tether connection per browser, shared by all its tabs.
//
// connectShared() gives each tab a SharedClient with the same methods and
// events as TetherClient, while a single TetherClient (one WebSocket) does the
// work for every tab of the browser:
//
// * in a SharedWorker running this very module, where the browser has them;
// * otherwise in one elected "leader" tab: the tab holding a Web Lock
//   (navigator.locks) or, without locks, the tab that won a BroadcastChannel
//   election. Other tabs relay their calls to it and receive its events over a
//   BroadcastChannel. When the leader tab closes another tab takes over and
//   resumes the same session from the positions it saw, so nothing is lost or
//   repeated.
//
// Presence therefore counts the browser as one device, and the browser is
// "away" only when every tab reported idle.

import {
  AuthenticationError,
  ConnectionClosed,
  EVENT_TYPES,
  MalformedReply,
  RequestError,
  RequestInterrupted,
  SeqTracker,
  TetherClient,
  TetherError,
  newCid,
} from "./client.js";

/** Client methods a tab may call through the shared connection. */
export const METHODS = Object.freeze([
  "request",
  "subscribePresence",
  "unsubscribePresence",
  "setIdle",
  "createRoom",
  "joinRoom",
  "leaveRoom",
  "invite",
  "removeMember",
  "listRooms",
  "members",
  "openDm",
  "send",
  "edit",
  "delete",
  "history",
  "ack",
  "typing",
  "ping",
  "joinCall",
  "leaveCall",
  "publishCall",
  "answerCall",
  "sendCallIce",
  "muteCall",
  "setCallQuality",
  "restartCall",
  "bye",
]);
// Calls a follower repeats on a new leader when the old one left before
// answering: the same ones the client resends after a reconnect (send keeps
// its cid, so it is stored once).
const REPEATABLE = new Set([
  "subscribePresence",
  "unsubscribePresence",
  "setIdle",
  "joinRoom",
  "invite",
  "removeMember",
  "listRooms",
  "members",
  "openDm",
  "send",
  "delete",
  "history",
  "ack",
  "joinCall",
  "muteCall",
]);
const MAX_PENDING_CALLS = 1000;
const MAX_TABS = 1000;
// Messages a tab remembers having shown, to drop one a hand-over repeats.
const MAX_SHOWN = 10000;
// Tabs tell the host they are alive this often; silent for TAB_TIMEOUT_MS, a
// tab is dropped (its idle state and presence subscriptions with it). Generous:
// browsers run the timers of hidden tabs as rarely as once a minute.
const TAB_ALIVE_MS = 5000;
const TAB_TIMEOUT_MS = 150000;
// Election without Web Locks: the leader announces itself every LEADER_BEAT_MS;
// a leader unheard of for LEADER_TIMEOUT_MS is gone, and a tab claims the
// place, winning if no lower id claims within CLAIM_WAIT_MS.
const LEADER_BEAT_MS = 1000;
const LEADER_TIMEOUT_MS = 3500;
const CLAIM_WAIT_MS = 300;
// The leader shares its resume state this often, for whoever takes over.
const SNAPSHOT_MS = 2000;
// A SharedWorker that has not answered a tab by then is taken as unable to run.
const WORKER_START_MS = 5000;
const DEVICE_KEY = "tether:device";

// -- errors and events across structured clone ---------------------------------------

/** @param {any} err */
export function serializeError(err) {
  if (err === null || typeof err !== "object") return { name: "TetherError", message: String(err) };
  return {
    name: String(err.name ?? "Error"),
    message: String(err.message ?? err),
    code: err.code,
    reason: err.reason,
    temporary: err.temporary,
    request: err.request,
  };
}

/** @param {any} data */
export function deserializeError(data) {
  switch (data?.name) {
    case "AuthenticationError":
      return new AuthenticationError(data.code, data.reason ?? "");
    case "RequestInterrupted":
      return new RequestInterrupted(data.code, data.reason ?? "", data.request ?? "");
    case "ConnectionClosed":
      return new ConnectionClosed(data.code, data.reason ?? "");
    case "RequestError":
      return new RequestError(data.code, data.reason ?? "", data.temporary === true);
    case "MalformedReply":
      return new MalformedReply(data.message);
    case "TypeError":
      return new TypeError(data.message);
    case "RangeError":
      return new RangeError(data.message);
    default:
      return new TetherError(data?.message ?? "unknown error");
  }
}

/** Event details that hold errors (closed, resync-failed) travel serialized. @param {string} type @param {any} detail */
function exportDetail(type, detail) {
  if (type === "closed") return serializeError(detail);
  if (type === "resync-failed") return { ...detail, error: serializeError(detail.error) };
  return detail;
}
/** @param {string} type @param {any} detail */
function importDetail(type, detail) {
  if (type === "closed") return deserializeError(detail);
  if (type === "resync-failed") return { ...detail, error: deserializeError(detail.error) };
  return detail;
}

// -- the host: one TetherClient serving every tab -------------------------------------

/**
 * Runs the one connection on behalf of the tabs (in the SharedWorker, or in the
 * leader tab). Transport-agnostic: `post(tab, message)` reaches one tab, or
 * every tab when `tab` is null.
 */
export class Host {
  /**
   * @param {(tab: string | null, message: any) => void} post
   * @param {{restore?: any, WebSocket?: any}} [extra] resume state of a previous host; a WebSocket class for tests
   */
  constructor(post, extra = {}) {
    this.post = post;
    this.extra = extra;
    /** @type {Map<string, {idle: boolean, presence: Set<string>, seen: number}>} */
    this.tabs = new Map();
    /** @type {TetherClient | null} */
    this.client = null;
    /** @type {Promise<TetherClient> | null} */
    this.opening = null;
    /** @type {{url: string, options: any} | null} */
    this.config = null;
    /** @type {Map<number, {resolve: (t: string) => void, reject: (e: any) => void}>} */
    this.tokenWaits = new Map();
    this.nextTokenId = 1;
    this.idle = false;
    this.stopped = false;
    this.sweeper = setInterval(() => this.sweep(), TAB_ALIVE_MS);
    // In Node (tests), the sweeper alone does not keep the process alive.
    /** @type {any} */ (this.sweeper).unref?.();
  }

  /** A message from a tab. @param {any} msg */
  async handle(msg) {
    const tab = String(msg.tab ?? "");
    if (!tab) return;
    if (msg.k !== "leave") this.touch(tab);
    switch (msg.k) {
      case "hello":
        // The latest tab's settings (its token) open the next connection, e.g.
        // after a sign-out in another tab closed the previous one.
        this.config = { url: msg.url, options: msg.options ?? {} };
        try {
          const client = await this.ensureOpen();
          this.post(tab, { k: "ready", tab, welcome: client.welcome, connected: client.connected });
        } catch (err) {
          // A stopped host does not answer: the tab says hello to the next one.
          if (!this.stopped) this.post(tab, { k: "failed", tab, error: serializeError(err) });
        }
        return;
      case "alive":
        return;
      case "leave":
        await this.dropTab(tab);
        return;
      case "token":
        this.answerToken(msg);
        return;
      case "call":
        await this.call(tab, msg);
        return;
      default:
        return;
    }
  }

  /** @param {string} tab */
  touch(tab) {
    const known = this.tabs.get(tab);
    if (known) {
      known.seen = Date.now();
      return;
    }
    if (this.tabs.size >= MAX_TABS) return;
    this.tabs.set(tab, { idle: false, presence: new Set(), seen: Date.now() });
    void this.updateIdle();
  }

  sweep() {
    const now = Date.now();
    for (const [tab, state] of this.tabs) if (now - state.seen > TAB_TIMEOUT_MS) void this.dropTab(tab);
  }

  /** A tab left: its idle vote and presence subscriptions go with it. @param {string} tab */
  async dropTab(tab) {
    const state = this.tabs.get(tab);
    if (!state) return;
    this.tabs.delete(tab);
    const orphans = [...state.presence].filter((u) => ![...this.tabs.values()].some((t) => t.presence.has(u)));
    if (this.client && !this.client.closed) {
      if (orphans.length > 0) this.client.unsubscribePresence(orphans).catch(() => {});
      await this.updateIdle();
    }
  }

  /** The browser is idle when every tab is. */
  async updateIdle() {
    const idle = this.tabs.size > 0 && [...this.tabs.values()].every((t) => t.idle);
    if (idle === this.idle || !this.client || this.client.closed) return;
    this.idle = idle;
    await this.client.setIdle(idle).catch(() => {});
  }

  async ensureOpen() {
    if (this.client && !this.client.closed) return this.client;
    if (this.opening) return this.opening;
    if (this.stopped) throw new ConnectionClosed(1000, "host stopped");
    if (!this.config) throw new TetherError("no tab configured the connection");
    const { url, options } = this.config;
    const client = new TetherClient(url, {
      ...options,
      WebSocket: this.extra.WebSocket ?? options.WebSocket,
      restore: this.extra.restore ?? options.restore,
      tokenProvider: options.hasTokenProvider ? () => this.askToken() : undefined,
    });
    for (const type of EVENT_TYPES) {
      client.on(type, (detail) => {
        // A host that stops (its leader tab left) closes its client: that is
        // no news for the tabs, which move to the next host.
        if (this.stopped) return;
        if (type === "closed" && detail.code === 3507) {
          // Another host resumed our session (two leaders for a moment): take
          // it back unless this host is told to stop meanwhile.
          this.extra = { ...this.extra, restore: client.snapshot() };
          this.client = null;
          this.ensureOpen().catch(() => {});
          return;
        }
        this.post(null, { k: "event", type, detail: exportDetail(type, detail) });
      });
    }
    this.opening = client
      .open()
      .then(() => {
        if (this.stopped) {
          // The host stopped (its tab resigned or left) while this opened:
          // no connection may outlive it.
          client.close();
          throw new ConnectionClosed(1000, "host stopped");
        }
        this.client = client;
        // A new connection starts active (after a hand-over, or one that took
        // back a session with 3507): tell it the tabs' vote.
        this.idle = false;
        void this.updateIdle();
        return client;
      })
      .finally(() => {
        this.opening = null;
      });
    return this.opening;
  }

  /** A fresh token from a tab (token providers live in the tabs). */
  askToken() {
    const tabs = [...this.tabs.entries()].sort((a, b) => b[1].seen - a[1].seen);
    if (tabs.length === 0) return Promise.reject(new AuthenticationError(3006, "no tab to ask for a token"));
    const id = this.nextTokenId++;
    return new Promise((resolve, reject) => {
      this.tokenWaits.set(id, { resolve, reject });
      this.post(tabs[0][0], { k: "token?", tab: tabs[0][0], id });
      setTimeout(() => {
        if (this.tokenWaits.delete(id)) reject(new AuthenticationError(3006, "no tab answered with a token"));
      }, 30000);
    });
  }

  /** @param {any} msg */
  answerToken(msg) {
    const wait = this.tokenWaits.get(msg.id);
    if (!wait) return;
    this.tokenWaits.delete(msg.id);
    if (typeof msg.token === "string" && msg.token) wait.resolve(msg.token);
    else wait.reject(deserializeError(msg.error));
  }

  /** @param {string} tab @param {any} msg */
  async call(tab, msg) {
    const { id, method } = msg;
    const args = Array.isArray(msg.args) ? msg.args : [];
    try {
      if (!METHODS.includes(method)) throw new TypeError(`unknown method ${method}`);
      const client = await this.ensureOpen();
      let value;
      const state = this.tabs.get(tab);
      if (method === "setIdle") {
        // One vote per tab; the browser reports idle only when all tabs are.
        if (state) state.idle = Boolean(args[0]);
        await this.updateIdle();
      } else if (method === "unsubscribePresence") {
        const users = Array.isArray(args[0]) ? args[0] : [];
        state?.presence.forEach((u) => users.includes(u) && state.presence.delete(u));
        const others = [...this.tabs.values()];
        const orphans = users.filter((u) => !others.some((t) => t.presence.has(u)));
        if (orphans.length > 0) await client.unsubscribePresence(orphans);
      } else {
        value = await /** @type {any} */ (client)[method](...args);
        if (method === "subscribePresence" && state) for (const u of args[0]) state.presence.add(u);
        this.announceRoomChange(method, args, value, client);
      }
      this.post(tab, { k: "result", tab, id, ok: true, value });
    } catch (err) {
      this.post(tab, { k: "result", tab, id, ok: false, error: serializeError(err) });
    }
  }

  /**
   * The server pushes no `room`/`member` event to the connection that asked
   * for the change, so the other tabs learn of a room created, joined, opened
   * or left in one tab from the host (every tab gets it; handling it is
   * idempotent: the asking tab already has the answer).
   * @param {string} method @param {any[]} args @param {any} value @param {TetherClient} client
   */
  announceRoomChange(method, args, value, client) {
    let type = null;
    let detail = null;
    if ((method === "createRoom" || method === "joinRoom" || method === "openDm") && value) {
      type = "room";
      detail = { room: value, unread: 0 };
    } else if (method === "leaveRoom" && typeof args[0] === "string" && client.user) {
      type = "member";
      detail = { room: args[0], user: client.user, action: "left" };
    }
    if (type) this.post(null, { k: "event", type, detail: exportDetail(type, detail) });
  }

  /** Stop serving: close the connection (without bye: the user did not sign out). */
  stop() {
    this.stopped = true;
    clearInterval(this.sweeper);
    if (this.client) this.client.close();
    for (const wait of this.tokenWaits.values()) wait.reject(new ConnectionClosed(1000, "host stopped"));
    this.tokenWaits.clear();
  }
}

// -- the tab side ----------------------------------------------------------------------

/**
 * What each tab holds: the methods of TetherClient (all returning promises),
 * its events, `welcome`, `user`, `connected`, `closed`, and `role`.
 */
export class SharedClient extends EventTarget {
  /**
   * @param {{url: string, options: any, tab: string, tokenProvider?: () => (string | Promise<string>)}} config
   */
  constructor(config) {
    super();
    this.config = config;
    this.tab = config.tab;
    /** @type {"worker" | "leader" | "follower"} */
    this.role = "follower";
    this.welcome = null;
    /** @type {ConnectionClosed | null} */
    this.closed = null;
    this._connected = false;
    /** @type {Map<number, {method: string, args: any[], resolve: (v: any) => void, reject: (e: any) => void}>} */
    this._calls = new Map();
    this._nextId = 1;
    /** @type {(msg: any) => void} */
    this._post = () => {};
    /** @type {{resolve: (v: any) => void, reject: (e: any) => void} | null} */
    this._ready = null;
    // What this tab has seen, so that it can take over as leader without loss
    // or repeats (see takeOver()).
    this.seen = new SeqTracker();
    /** @type {Set<string>} "room seq" of the latest msg and sent events shown, oldest first */
    this._shown = new Set();
    // This tab's idle vote and presence subscriptions, for a new host (_hostChanged).
    this._idle = false;
    /** @type {Set<string>} */
    this._following = new Set();
    this.session = null;
  }

  get user() {
    return this.welcome?.user ?? null;
  }
  get connected() {
    return this._connected;
  }

  /** @param {string} type @param {(detail: any) => void} fn */
  on(type, fn) {
    /** @param {Event} ev */
    const listener = (ev) => fn(/** @type {CustomEvent} */ (ev).detail);
    this.addEventListener(type, listener);
    return () => this.removeEventListener(type, listener);
  }

  /** Say hello to the (current) host; resolves once it is connected. */
  hello() {
    return new Promise((resolve, reject) => {
      this._ready = { resolve, reject };
      const { tokenProvider: _provider, ...plain } = this.config.options;
      this._post({
        k: "hello",
        tab: this.tab,
        url: this.config.url,
        options: { ...plain, WebSocket: undefined, hasTokenProvider: Boolean(this.config.tokenProvider) },
      });
    });
  }

  /** A message from the host. @param {any} msg */
  receive(msg) {
    if (msg.tab !== undefined && msg.tab !== null && msg.tab !== this.tab) return;
    switch (msg.k) {
      case "ready":
        this.welcome = msg.welcome;
        this.session = msg.welcome?.session ?? this.session;
        // The host's device is the browser's (tabs opened at once may each have
        // made their own before one was stored): a new leader must resume as it.
        if (typeof msg.welcome?.device === "string") this.config.options.device = msg.welcome.device;
        this._connected = msg.connected;
        this._ready?.resolve(this);
        this._ready = null;
        return;
      case "failed":
        this._ready?.reject(deserializeError(msg.error));
        this._ready = null;
        return;
      case "result": {
        const call = this._calls.get(msg.id);
        if (!call) return;
        this._calls.delete(msg.id);
        if (msg.ok) call.resolve(msg.value);
        else call.reject(deserializeError(msg.error));
        return;
      }
      case "token?":
        void this._giveToken(msg.id);
        return;
      case "event":
        this._event(msg.type, importDetail(msg.type, msg.detail));
        return;
      default:
        return;
    }
  }

  /** @param {number} id */
  async _giveToken(id) {
    try {
      if (!this.config.tokenProvider) throw new AuthenticationError(3006, "this tab has no tokenProvider");
      const token = await this.config.tokenProvider();
      this._post({ k: "token", tab: this.tab, id, token });
    } catch (err) {
      this._post({ k: "token", tab: this.tab, id, error: serializeError(err) });
    }
  }

  /** @param {string} type @param {any} detail */
  _event(type, detail) {
    // Bookkeeping for a take-over: what this tab was shown, per room.
    if (type === "msg" || type === "sent") {
      // A hand-over may show a message again: a send the old leader stored
      // but never answered comes back as a `sent` with dup, and the new
      // leader replays what it saw less of than this tab.
      const key = `${detail.room} ${detail.seq}`;
      if (this._shown.has(key)) return;
      this._shown.add(key);
      const oldest = this._shown.size > MAX_SHOWN ? this._shown.values().next().value : undefined;
      if (oldest !== undefined) this._shown.delete(oldest);
      this.seen.touch(detail.room, detail.seq).add(detail.seq);
    } else if (type === "room") this.seen.seed(detail.room.id, detail.room.lastSeq);
    else if (type === "recovered" && (detail.code === 120 || detail.code === 121)) this.seen.forget(detail.room);
    else if (type === "member" && detail.user === this.user && (detail.action === "left" || detail.action === "removed")) {
      this.seen.forget(detail.room);
    } else if (type === "reconnecting") this._connected = false;
    else if (type === "reconnected") this._connected = true;
    else if (type === "closed") {
      this.closed = detail;
      this._connected = false;
    }
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /** A leader's snapshot seeds rooms this tab never saw a message in. @param {any} snapshot */
  _snapshot(snapshot) {
    if (snapshot?.session) this.session = snapshot.session;
    for (const [room, seq] of Object.entries(snapshot?.rooms ?? {})) this.seen.seed(room, Number(seq));
  }

  /** Resume state for this tab becoming the host. */
  takeOver() {
    return { session: this.session ?? undefined, device: this.config.options.device, rooms: this.seen.resume() };
  }

  /** @param {string} method @param {any[]} args */
  _call(method, args) {
    if (this.closed) return Promise.reject(this.closed);
    if (this._calls.size >= MAX_PENDING_CALLS) return Promise.reject(new TetherError("too many calls pending"));
    return new Promise((resolve, reject) => {
      const id = this._nextId++;
      this._calls.set(id, { method, args, resolve, reject });
      this._post({ k: "call", tab: this.tab, id, method, args });
    });
  }

  /** The host changed (a new leader): calls it never answered are repeated or interrupted. */
  _hostChanged() {
    for (const [id, call] of this._calls) {
      if (REPEATABLE.has(call.method)) this._post({ k: "call", tab: this.tab, id, method: call.method, args: call.args });
      else {
        this._calls.delete(id);
        call.reject(new RequestInterrupted(1006, "the leader tab went away", call.method));
      }
    }
    // A new host knows nothing of this tab: give it this tab's idle vote and
    // presence subscriptions again (the new connection starts active).
    if (this._idle) this._call("setIdle", [true]).catch(() => {});
    if (this._following.size > 0) this._call("subscribePresence", [[...this._following]]).catch(() => {});
  }

  /** This tab leaves (the connection stays for the other tabs). */
  close() {
    if (this.closed) return;
    this._post({ k: "leave", tab: this.tab });
    const closed = new ConnectionClosed(1000, "tab closed");
    this.closed = closed;
    for (const call of this._calls.values()) call.reject(closed);
    this._calls.clear();
    this._leave();
  }

  /** Transport clean-up, set by the mode. */
  _leave() {}
}

for (const method of METHODS) {
  Object.defineProperty(SharedClient.prototype, method, {
    value(/** @type {any[]} */ ...args) {
      return this._call(method, args);
    },
    writable: true,
    configurable: true,
  });
}

// A send gets its cid here, in the tab: a call repeated on a new leader (see
// _hostChanged) must carry the same cid, or the server stores it twice.
SharedClient.prototype.send = function (/** @type {string} */ roomId, /** @type {any} */ body, /** @type {any} */ options = {}) {
  return this._call("send", [roomId, body, { ...options, cid: options?.cid ?? newCid() }]);
};

SharedClient.prototype.setIdle = function (/** @type {boolean} */ idle) {
  this._idle = Boolean(idle);
  return this._call("setIdle", [idle]);
};
SharedClient.prototype.subscribePresence = async function (/** @type {string[]} */ users) {
  const states = await this._call("subscribePresence", [users]);
  for (const user of users) this._following.add(user);
  return states;
};
SharedClient.prototype.unsubscribePresence = async function (/** @type {string[]} */ users) {
  await this._call("unsubscribePresence", [users]);
  for (const user of users) this._following.delete(user);
};

// -- modes -----------------------------------------------------------------------------

/** A stable device id for this browser profile (localStorage), or a fresh one. */
function browserDevice() {
  try {
    const stored = globalThis.localStorage?.getItem(DEVICE_KEY);
    if (stored) return stored;
    const device = `web-${newCid().slice(0, 16)}`;
    globalThis.localStorage?.setItem(DEVICE_KEY, device);
    return device;
  } catch {
    return `web-${newCid().slice(0, 16)}`;
  }
}

/**
 * @typedef {object} SharedOptions
 * @property {string} [token]
 * @property {() => (string | Promise<string>)} [tokenProvider] runs in the tab; the host asks a tab for tokens
 * @property {string} [device] default: a random id kept in localStorage ("tether:device")
 * @property {"auto" | "worker" | "leader"} [mode] "auto" (default): SharedWorker if available, else leader election
 * @property {string} [workerUrl] where shared.js is served (default: this module's URL)
 * @property {string} [channel] BroadcastChannel and lock name (default: "tether:" + url)
 * @property {any} [locks] a Web Locks implementation (default: navigator.locks; null: none)
 * @property {any} [WebSocket] the WebSocket class used by the host (leader mode)
 * @property {any} [SharedWorker] the SharedWorker class (default: globalThis.SharedWorker)
 */

/**
 * Connect this tab to the browser's one shared connection.
 * @param {string} url
 * @param {SharedOptions & Record<string, any>} [options] also every TetherClient option
 * @returns {Promise<SharedClient>}
 */
export async function connectShared(url, options = {}) {
  const { tokenProvider, mode = "auto", workerUrl, channel, locks, SharedWorker, ...rest } = options;
  const clientOptions = { ...rest, device: rest.device ?? browserDevice() };
  const tab = `tab-${newCid().slice(0, 12)}`;
  const tabClient = new SharedClient({ url, options: clientOptions, tab, tokenProvider });
  const SharedWorkerClass = SharedWorker ?? globalThis.SharedWorker;
  if (typeof SharedWorkerClass === "function" && mode !== "leader") {
    try {
      await viaWorker(tabClient, url, workerUrl, SharedWorkerClass);
      return tabClient;
    } catch (err) {
      // Only a worker that cannot run here means "elect a leader instead";
      // the server's answers (a refused token...) are the same in both modes.
      if (mode === "worker" || !(err instanceof WorkerUnavailable)) throw err;
    }
  }
  await viaLeader(tabClient, channel ?? `tether:${url}`, locks === undefined ? globalThis.navigator?.locks ?? null : locks, rest.WebSocket);
  return tabClient;
}

/**
 * @param {SharedClient} tabClient
 * @param {string} url
 * @param {string | undefined} workerUrl
 * @param {any} SharedWorkerClass
 */
async function viaWorker(tabClient, url, workerUrl, SharedWorkerClass) {
  const script = workerUrl ?? import.meta.url;
  let worker;
  try {
    worker = new SharedWorkerClass(script, { type: "module", name: `tether:${url}` });
  } catch (err) {
    throw new WorkerUnavailable(`no module SharedWorker here: ${err}`);
  }
  const port = worker.port;
  tabClient.role = "worker";
  /** @type {() => void} */
  let attached = () => {};
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let startTimer;
  const running = new Promise((resolve, reject) => {
    attached = () => resolve(undefined);
    worker.onerror = () => reject(new WorkerUnavailable("the SharedWorker failed to load"));
    startTimer = setTimeout(() => reject(new WorkerUnavailable("the SharedWorker did not start")), WORKER_START_MS);
  });
  port.onmessage = (/** @type {MessageEvent} */ ev) => {
    if (ev.data?.k === "attached") attached();
    else tabClient.receive(ev.data);
  };
  port.start();
  try {
    await running;
  } catch (err) {
    port.close();
    throw err;
  } finally {
    clearTimeout(startTimer);
  }
  tabClient._post = (msg) => port.postMessage(msg);
  const alive = setInterval(() => port.postMessage({ k: "alive", tab: tabClient.tab }), TAB_ALIVE_MS);
  const leave = () => port.postMessage({ k: "leave", tab: tabClient.tab });
  globalThis.addEventListener?.("pagehide", leave);
  tabClient._leave = () => {
    clearInterval(alive);
    globalThis.removeEventListener?.("pagehide", leave);
    port.close();
  };
  await tabClient.hello();
}

/** The SharedWorker could not run here: the tabs elect a leader instead. */
class WorkerUnavailable extends Error {}

/**
 * The fallback: one tab hosts the connection, the others relay over a BroadcastChannel.
 * @param {SharedClient} tabClient
 * @param {string} name
 * @param {any} locks
 * @param {any} WebSocketClass
 */
export async function viaLeader(tabClient, name, locks, WebSocketClass) {
  const bus = new BroadcastChannel(name);
  /** @type {Host | null} */
  let host = null;
  let leader = /** @type {string | null} */ (null);
  let stopped = false;
  /** @type {ReturnType<typeof setInterval>[]} this tab's keep-alive and election checks */
  const timers = [];
  /** @type {ReturnType<typeof setInterval>[]} the leader's beats and snapshots, while it leads */
  const leaderTimers = [];
  /** @type {(() => void) | null} */
  let releaseLock = null;
  let lastBeat = 0;
  /** @type {Set<string>} */
  const claims = new Set();

  // Host → tabs: the leader's own tab directly, the others over the channel.
  /** @param {string | null} to @param {any} msg */
  const hostPost = (to, msg) => {
    if (to === null || to === tabClient.tab) queueMicrotask(() => tabClient.receive(msg));
    if (to !== tabClient.tab) bus.postMessage({ ...msg, via: "host", tab: to ?? undefined, leader: tabClient.tab });
  };

  const becomeLeader = async () => {
    if (stopped || host) return;
    host = new Host(hostPost, { restore: tabClient.takeOver(), WebSocket: WebSocketClass });
    tabClient.role = "leader";
    leader = tabClient.tab;
    tabClient._post = (msg) => queueMicrotask(() => host?.handle(msg));
    const announce = () => bus.postMessage({ via: "leader", id: tabClient.tab });
    announce();
    leaderTimers.push(setInterval(announce, LEADER_BEAT_MS));
    leaderTimers.push(
      setInterval(() => {
        if (host?.client && !host.client.closed) bus.postMessage({ via: "snapshot", state: host.client.snapshot() });
      }, SNAPSHOT_MS),
    );
    await tabClient.hello().catch(() => {});
    tabClient._hostChanged();
  };

  bus.onmessage = (/** @type {MessageEvent} */ ev) => {
    const msg = ev.data;
    if (stopped || msg === null || typeof msg !== "object") return;
    switch (msg.via) {
      case "tab":
        if (host) void host.handle(msg);
        return;
      case "host":
        if (host) return;
        // The host that answered is the leader: its beats are no change of host.
        if (leader === null) leader = msg.leader ?? null;
        tabClient.receive(msg);
        return;
      case "snapshot":
        if (!host) tabClient._snapshot(msg.state);
        return;
      case "leader":
        lastBeat = Date.now();
        if (host && msg.id < tabClient.tab && !locks) {
          resign(); // two leaders after a split election: the lower id keeps it
          return;
        }
        if (!host && leader !== msg.id) {
          leader = msg.id;
          void tabClient.hello().then(() => tabClient._hostChanged()).catch(() => {});
        }
        return;
      case "claim":
        claims.add(msg.id);
        return;
      default:
        return;
    }
  };

  const resign = () => {
    if (!host) return;
    host.stop();
    host = null;
    for (const t of leaderTimers.splice(0)) clearInterval(t);
    tabClient.role = "follower";
    leader = null;
    tabClient._post = (msg) => bus.postMessage({ ...msg, via: "tab" });
  };

  tabClient._post = (msg) => bus.postMessage({ ...msg, via: "tab" });
  tabClient.role = "follower";
  timers.push(setInterval(() => tabClient._post({ k: "alive", tab: tabClient.tab }), TAB_ALIVE_MS));

  if (locks) {
    // Whoever holds the lock leads until its tab closes (the browser releases it).
    void locks.request(name, () => {
      if (stopped) return undefined;
      void becomeLeader();
      return new Promise((resolve) => {
        releaseLock = () => resolve(undefined);
      });
    });
  } else {
    // Heartbeat election: claim when no leader is heard; the lowest id wins.
    const check = async () => {
      if (stopped || host || Date.now() - lastBeat < LEADER_TIMEOUT_MS) return;
      claims.clear();
      bus.postMessage({ via: "claim", id: tabClient.tab });
      await new Promise((resolve) => setTimeout(resolve, CLAIM_WAIT_MS));
      if (stopped || host || Date.now() - lastBeat < LEADER_TIMEOUT_MS) return;
      if ([...claims].some((id) => id < tabClient.tab)) return;
      await becomeLeader();
    };
    timers.push(setInterval(() => void check(), LEADER_BEAT_MS));
    lastBeat = Date.now() - LEADER_TIMEOUT_MS + CLAIM_WAIT_MS * 2; // a short wait for an existing leader
    void check();
  }

  tabClient._leave = () => {
    stopped = true;
    tabClient._post = () => {};
    resign();
    for (const t of timers.splice(0)) clearInterval(t);
    if (releaseLock) releaseLock();
    bus.close();
  };
  globalThis.addEventListener?.("pagehide", () => tabClient.close());

  // Wait for a leader (this tab or another) to answer the hello.
  await new Promise((resolve, reject) => {
    const started = Date.now();
    const poll = setInterval(() => {
      if (tabClient.welcome) {
        clearInterval(poll);
        resolve(undefined);
      } else if (tabClient.closed || Date.now() - started > 30000) {
        clearInterval(poll);
        reject(tabClient.closed ?? new ConnectionClosed(1006, "no leader tab answered"));
      }
    }, 20);
    // A follower asks the current leader right away; a leader asks itself in becomeLeader().
    if (!host) tabClient.hello().then(() => resolve(undefined), reject);
  });
}

// -- inside the SharedWorker ----------------------------------------------------------------

/**
 * Serve the tabs that connect to a SharedWorker scope (`connect` events with a
 * MessagePort each) from one Host. Runs by itself when this module is the
 * worker's script; exported so that tests can drive it with a stand-in scope.
 * @param {EventTarget} scope
 * @param {{WebSocket?: any}} [extra]
 */
export function serveTabs(scope, extra = {}) {
  /** @type {Map<string, MessagePort>} */
  const ports = new Map();
  const host = new Host((tab, msg) => {
    if (tab === null) for (const port of ports.values()) port.postMessage(msg);
    else ports.get(tab)?.postMessage(msg);
  }, extra);
  scope.addEventListener("connect", (/** @type {any} */ ev) => {
    /** @type {MessagePort} */
    const port = ev.ports[0];
    port.onmessage = (/** @type {MessageEvent} */ msg) => {
      const data = msg.data;
      if (data?.tab && !ports.has(data.tab) && ports.size < MAX_TABS) ports.set(data.tab, port);
      void host.handle(data);
      if (data?.k === "leave") {
        ports.delete(data.tab);
        port.close();
      }
    };
    port.start();
    // Tells the tab the worker runs (a worker that fails to load never says it).
    port.postMessage({ k: "attached" });
  });
  return host;
}

const workerScope = /** @type {any} */ (globalThis).SharedWorkerGlobalScope;
if (typeof workerScope === "function" && globalThis instanceof workerScope) serveTabs(globalThis);
