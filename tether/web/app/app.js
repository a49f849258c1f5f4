// The tether web app: the page served at `/` by `tether serve`.
//
// Plain ES modules, no framework and no build step; everything comes from this
// server (the SDK under /sdk/, this app under /app/). The SDK keeps the
// connection alive, resumes it after a drop and delivers every message once and
// in order; this file turns its events into the page (see docs/web-app.md).

import { AuthenticationError, RequestError, newCid } from "/sdk/client.js";
import { connectShared } from "/sdk/shared.js";
import { Call } from "./call.js";
import { bodyText, clock, presenceText, receiptState, shortKey, typingText } from "./format.js";

/** Messages per history page. */
const PAGE = 50;
/** Messages one room's view holds at most (older ones are dropped, and page in again). */
const MAX_VIEW_MESSAGES = 2000;
/** Delivered receipts of a room are batched over this long (ms). */
const DELIVERED_BATCH_MS = 400;
/** `typing: true` is repeated this often while the user keeps typing (ms). */
const TYPING_REFRESH_MS = 3000;
/** Without a keystroke for this long, the user stopped typing (ms). */
const TYPING_IDLE_MS = 4000;
/** The device reports itself idle after this long hidden or without input (ms). */
const IDLE_AFTER_MS = 5 * 60 * 1000;
/** The timeline counts as "at the bottom" within this many pixels. */
const BOTTOM_SLACK_PX = 40;
/** Messages of one sender closer than this are grouped under one name (ms). */
const GROUP_MS = 5 * 60 * 1000;
/** Scrolling this close to the top loads the previous page. */
const TOP_SLACK_PX = 60;

const TOKEN_KEY = "tether.app.token";

/**
 * Fire and forget an SDK call: with the shared connection every method returns
 * a promise, and a failure here (closed, reconnecting) needs no handling.
 * @param {unknown} result
 */
function quietly(result) {
  if (result && typeof (/** @type {any} */ (result).catch) === "function") /** @type {any} */ (result).catch(() => {});
}

/** @param {string} id */
const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));

/**
 * Create an element with attributes and children.
 * @param {string} tag
 * @param {Record<string, any>} [attrs]
 * @param {(Node|string|null|undefined)[]} [children]
 */
function h(tag, attrs = {}, children = []) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) el.append(c);
  return el;
}

/**
 * @typedef {object} RoomView  what the page holds of one room it has shown
 * @property {Map<number, any>} messages  seq → message (SDK shape)
 * @property {Map<string, {cid: string, body: any, ts: number, failed: string|null}>} pending my sends without a seq yet
 * @property {number|null} oldest  lowest seq loaded
 * @property {boolean} more  older messages remain
 * @property {boolean} loaded
 * @property {boolean} loading
 * @property {Map<string, {user: string, role: string, read: number, delivered: number}>} members
 * @property {string[]} typing  who types, without me
 */

const state = {
  /** @type {any} the SDK's SharedClient: TetherClient's methods and events */
  client: null,
  /** @type {string|null} */
  me: null,
  /** @type {Map<string, any>} room id → room summary (SDK shape) plus `peer` for direct rooms */
  rooms: new Map(),
  /** @type {string|null} */
  current: null,
  /** @type {Map<string, RoomView>} */
  views: new Map(),
  /** @type {Map<string, any>} user → presence event */
  presence: new Map(),
  /** @type {Map<string, number>} room → delivered position waiting to be sent */
  delivered: new Map(),
  /** @type {ReturnType<typeof setTimeout>|null} */
  deliveredTimer: null,
  typingSentAt: 0,
  /** @type {string|null} the room the typing state was sent for */
  typingRoom: null,
  /** @type {ReturnType<typeof setTimeout>|null} */
  typingStop: null,
  idle: false,
  /** @type {ReturnType<typeof setTimeout>|null} */
  idleTimer: null,
  /** @type {Call|null} */
  call: null,
  /** @type {(() => void)[]} */
  unbind: [],
};

// -- sign in ---------------------------------------------------------------------

function wsUrl() {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
}

/**
 * Connect with `token`; on success show the app. The token is kept in
 * localStorage so that reopening the page signs in again (until sign out).
 * All tabs of the browser share one connection (the SDK's connectShared: a
 * SharedWorker, or an elected tab), so presence counts the browser once.
 * @param {string} token
 * @param {boolean} byName signed in with a --dev name (for the error text)
 */
async function signIn(token, byName) {
  const error = $("signin-error");
  const submit = /** @type {HTMLButtonElement} */ ($("signin-submit"));
  error.textContent = "";
  submit.disabled = true;
  /** @type {any} */
  let client;
  try {
    // The shared connection is keyed by a hash of the token: the SDK's
    // shared host keeps the settings of the first tab that configured it, so a
    // refused token (or the previous user, after a sign out) must not be the
    // one a new sign-in gets. Tabs signed in with the same token share.
    const key = shortKey(token);
    client = await connectShared(wsUrl(), {
      token,
      clientName: "tether-web/0.1",
      workerUrl: new URL(`/sdk/shared.js?k=${key}`, location.href).href,
      channel: `tether:${wsUrl()}:${key}`,
    });
  } catch (err) {
    submit.disabled = false;
    showSignin();
    if (err instanceof AuthenticationError) localStorage.removeItem(TOKEN_KEY);
    else if (!byName) (/** @type {HTMLTextAreaElement} */ ($("signin-token"))).value = token;
    if (err instanceof AuthenticationError) {
      error.textContent = byName
        ? "The server refused this name: name sign-in works only on a server started with --dev."
        : err.expired
          ? "This token has expired: ask for a new one."
          : "The server refused this token.";
    } else {
      error.textContent = `Cannot reach the server (${err?.message ?? err}).`;
    }
    return;
  }
  submit.disabled = false;
  localStorage.setItem(TOKEN_KEY, token);
  state.client = client;
  state.me = client.user;
  bindClient(client);
  const name = client.welcome.name;
  $("me").textContent = name && name !== client.user ? `${name} (${client.user})` : client.user;
  setConnection(client.connected ? "open" : "reconnecting");
  $("signin").hidden = true;
  $("app").hidden = false;
  await loadRooms();
  const wanted = location.hash.slice(1);
  if (wanted && state.rooms.has(decodeURIComponent(wanted))) await openRoom(decodeURIComponent(wanted));
}

function showSignin() {
  $("app").hidden = true;
  $("signin").hidden = false;
  $("banner").hidden = true;
}

async function signOut() {
  const client = forget();
  if (client) await client.bye().catch(() => client.close());
}

/** Drop everything of the signed-in user from the page and show the sign-in form. */
function forget() {
  const client = state.client;
  leaveCallLocally();
  for (const off of state.unbind) off();
  state.unbind = [];
  state.client = null;
  state.me = null;
  state.rooms.clear();
  state.views.clear();
  state.presence.clear();
  state.current = null;
  localStorage.removeItem(TOKEN_KEY);
  showSignin();
  return client;
}

// -- connection state ------------------------------------------------------------

/** @param {"open"|"reconnecting"|"closed"} value */
function setConnection(value) {
  const el = $("connection");
  el.dataset.state = value;
  el.textContent = { open: "connected", reconnecting: "reconnecting", closed: "disconnected" }[value];
}

/** @param {string|null} text */
function banner(text) {
  const el = $("banner");
  el.textContent = text ?? "";
  el.hidden = !text;
}

/** @param {any} client */
function bindClient(client) {
  const on = (type, fn) => state.unbind.push(client.on(type, fn));
  on("msg", onMessage);
  on("sent", onMessage);
  on("msg.edited", (e) => amend(e.room, e.seq, { body: e.body, editedAt: e.editedAt }));
  on("msg.deleted", (e) => amend(e.room, e.seq, { body: null, deleted: true }));
  on("receipts", onReceipts);
  on("typing", onTyping);
  on("read", onRead);
  on("member", onMember);
  on("room", (e) => {
    upsertRoom({ ...e.room, unread: e.unread, readSeq: state.rooms.get(e.room.id)?.readSeq ?? 0 });
    renderRooms();
  });
  on("presence", onPresence);
  on("reconnecting", (e) => {
    setConnection("reconnecting");
    banner(`Connection lost. Reconnecting${e.attempt > 1 ? ` (attempt ${e.attempt})` : ""}…`);
    // Typing lists are not carried over a drop: a resumed room sends its own.
    for (const view of state.views.values()) view.typing = [];
    renderTyping();
  });
  on("reconnected", () => {
    setConnection("open");
    banner(null);
    void resync();
  });
  on("resync-failed", (e) => {
    if (e.room === state.current) $("room-error").textContent = "Some messages could not be loaded; reload the page.";
  });
  on("closed", (closed) => {
    if (state.client !== client) return;
    setConnection("closed");
    leaveCallLocally();
    if (closed instanceof AuthenticationError) {
      forget();
      $("signin-error").textContent = "Your session ended: sign in again.";
    } else if (closed.code === 1000) {
      // Signed out from another tab of this browser (they share the connection).
      forget();
    } else {
      banner(`Disconnected (${closed.code}). Reload the page to connect again.`);
    }
  });
  for (const type of ["call.offer", "call.participant", "call.track", "call.speaker", "call.restart", "call.ended"]) {
    on(type, (e) => {
      if (state.call && e.room === state.call.room) state.call.onPush(type, e);
    });
  }
}

/** After a reconnect: unread counts, new rooms, receipts and presence of the room shown, the call. */
async function resync() {
  // The call first: the server keeps a dropped participant only for a grace period.
  if (state.call) {
    state.call.rejoin().catch((err) => callStatus(`could not rejoin the call: ${errorText(err)}`));
  }
  await loadRooms();
  const id = state.current;
  if (id && state.rooms.has(id)) {
    await loadMembers(id);
    renderMessages("keep");
  }
}

// -- rooms -----------------------------------------------------------------------

/** @param {any} room */
function upsertRoom(room) {
  const prev = state.rooms.get(room.id);
  state.rooms.set(room.id, { ...prev, ...room });
  if (room.kind === "direct" && !state.rooms.get(room.id).peer) void findPeer(room.id);
}

/** The other member of a direct room (its name is empty). @param {string} id */
async function findPeer(id) {
  const room = state.rooms.get(id);
  if (!room || !state.client) return;
  if (room.owner !== state.me) {
    room.peer = room.owner;
  } else {
    try {
      const members = await state.client.members(id);
      room.peer = members.find((m) => m.user !== state.me)?.user ?? state.me;
    } catch {
      return;
    }
  }
  renderRooms();
  if (state.current === id) renderRoomHeader();
}

/** @param {any} room */
function roomTitle(room) {
  if (room.kind === "direct") return room.peer ? `@${room.peer}` : "Direct conversation";
  return room.name || room.id;
}

async function loadRooms() {
  if (!state.client) return;
  try {
    const rooms = await state.client.listRooms();
    const seen = new Set();
    for (const room of rooms) {
      seen.add(room.id);
      upsertRoom(room);
    }
    for (const id of [...state.rooms.keys()]) if (!seen.has(id)) dropRoom(id);
  } catch (err) {
    $("sidebar-error").textContent = `Rooms could not be loaded: ${errorText(err)}`;
  }
  renderRooms();
}

/**
 * Draw the room list. Entries are updated in place (never rebuilt), so that
 * keyboard focus on a room stays put while messages arrive.
 */
function renderRooms() {
  const list = $("rooms");
  /** @type {Map<string, HTMLElement>} */
  const existing = new Map();
  for (const li of /** @type {HTMLCollectionOf<HTMLElement>} */ (list.children)) existing.set(li.dataset.room ?? "", li);
  let index = 0;
  for (const room of state.rooms.values()) {
    let li = existing.get(room.id);
    existing.delete(room.id);
    if (!li) {
      li = h("li", { "data-room": room.id }, [
        h("button", { type: "button", "data-room": room.id, onclick: () => void openRoom(room.id) }, [
          h("span", { class: "room-name" }),
          h("span", { class: "kind" }),
          h("span", { class: "unread" }),
        ]),
      ]);
    }
    if (list.children[index] !== li) list.insertBefore(li, list.children[index] ?? null);
    index += 1;
    const button = /** @type {HTMLElement} */ (li.firstElementChild);
    button.setAttribute("aria-current", room.id === state.current ? "true" : "false");
    button.querySelector(".room-name").textContent = roomTitle(room);
    button.querySelector(".kind").textContent = room.kind === "public" ? "public" : "";
    const badge = /** @type {HTMLElement} */ (button.querySelector(".unread"));
    const unread = room.unread || 0;
    badge.dataset.count = String(unread);
    badge.textContent = unread ? String(unread) : "";
    if (unread) badge.setAttribute("aria-label", `${unread} unread`);
    else badge.removeAttribute("aria-label");
  }
  for (const li of existing.values()) li.remove();
  $("rooms-empty").hidden = state.rooms.size > 0;
  const unread = [...state.rooms.values()].reduce((n, r) => n + (r.unread || 0), 0);
  document.title = unread ? `(${unread}) tether` : "tether";
}

/** @param {string} id */
function dropRoom(id) {
  state.rooms.delete(id);
  state.views.delete(id);
  state.delivered.delete(id);
  if (state.call && state.call.room === id) leaveCallLocally();
  if (state.current === id) {
    state.current = null;
    showRoom(false);
  }
}

/** @param {boolean} visible */
function showRoom(visible) {
  $("room").hidden = !visible;
  $("members-pane").hidden = !visible;
  $("placeholder").hidden = visible;
}

/** @param {string} id */
function view(id) {
  let v = state.views.get(id);
  if (!v) {
    v = { messages: new Map(), pending: new Map(), oldest: null, more: true, loaded: false, loading: false, members: new Map(), typing: [] };
    state.views.set(id, v);
  }
  return v;
}

/** Show a room: its latest page, members with presence, and mark it read. @param {string} id */
async function openRoom(id) {
  if (!state.rooms.has(id) || !state.client) return;
  if (state.typingRoom && state.typingRoom !== id) stopTyping();
  state.current = id;
  history.replaceState(null, "", `#${encodeURIComponent(id)}`);
  $("room-error").textContent = "";
  (/** @type {HTMLTextAreaElement} */ ($("message-input"))).value = "";
  showRoom(true);
  renderRooms();
  renderRoomHeader();
  renderCall();
  const v = view(id);
  renderMessages("bottom");
  renderMembers();
  renderTyping();
  const tasks = [loadMembers(id)];
  if (!v.loaded) tasks.push(loadPage(id, "latest"));
  await Promise.all(tasks);
  if (state.current === id) {
    renderMessages("bottom");
    markRead();
  }
}

function renderRoomHeader() {
  const room = state.current && state.rooms.get(state.current);
  if (!room) return;
  $("room-title").textContent = roomTitle(room);
  const kind = { public: "Public room", private: "Private room", direct: "Direct conversation" }[room.kind] ?? room.kind;
  $("room-subtitle").textContent = room.kind === "public" ? `${kind} · id ${room.id}` : kind;
  const owner = room.owner === state.me;
  $("invite-form").hidden = !(owner && room.kind !== "direct");
  $("leave-room").hidden = owner || room.kind === "direct";
}

/**
 * Load a page of history: the latest, or the one before the oldest loaded.
 * @param {string} id
 * @param {"latest"|"older"} which
 */
async function loadPage(id, which) {
  const v = view(id);
  if (v.loading || (which === "older" && !v.more) || !state.client) return;
  v.loading = true;
  try {
    const opts = which === "older" && v.oldest !== null ? { before: v.oldest, limit: PAGE } : { limit: PAGE };
    const page = await state.client.history(id, opts);
    for (const m of page.messages) v.messages.set(m.seq, m);
    if (page.messages.length) {
      const first = page.messages[0].seq;
      v.oldest = v.oldest === null ? first : Math.min(v.oldest, first);
      noteDelivered(id, page.messages[page.messages.length - 1].seq);
    }
    if (which === "older" || !v.loaded) v.more = page.more;
    v.loaded = true;
  } catch (err) {
    if (state.current === id) $("room-error").textContent = `History could not be loaded: ${errorText(err)}`;
  } finally {
    v.loading = false;
  }
  if (which === "older" && state.current === id) renderMessages("top");
}

/** @param {string} id */
async function loadMembers(id) {
  if (!state.client) return;
  const v = view(id);
  try {
    const members = await state.client.members(id);
    v.members = new Map(members.map((m) => [m.user, m]));
  } catch (err) {
    if (err instanceof RequestError && (err.code === 120 || err.code === 121)) {
      dropRoom(id);
      renderRooms();
    }
    return;
  }
  const others = [...v.members.keys()].filter((u) => u !== state.me && !u.startsWith("bot:"));
  for (let i = 0; i < others.length; i += 100) {
    try {
      const states = await state.client.subscribePresence(others.slice(i, i + 100));
      for (const p of states) state.presence.set(p.user, p);
    } catch {
      // 104: someone left meanwhile; their presence stays unknown (shown offline).
    }
  }
  if (state.current === id) {
    renderMembers();
    renderStates();
  }
}

// -- messages --------------------------------------------------------------------

/** A message pushed to us, or the SDK's `sent` for one of ours. @param {any} m */
function onMessage(m) {
  const room = state.rooms.get(m.room);
  if (!room) {
    void loadRooms();
    return;
  }
  room.lastSeq = Math.max(room.lastSeq ?? 0, m.seq);
  const v = state.views.get(m.room);
  if (v) {
    // Kept even before the first page arrives: the page merges with it by seq.
    const stick = m.room === state.current && (atBottom() || m.sender === state.me);
    v.messages.set(m.seq, m);
    if (m.sender === state.me) v.pending.delete(m.cid);
    trimView(v);
    if (m.room === state.current) renderMessages(stick ? "bottom" : "keep");
  }
  if (m.sender !== state.me) {
    noteDelivered(m.room, m.seq);
    if (m.room === state.current && canMarkRead()) markRead();
    else if (m.seq > (room.readSeq ?? 0) && !m.deleted) room.unread = (room.unread ?? 0) + 1;
  }
  renderRooms();
}

/** A room left open for long keeps only its newest messages (older ones page in again). @param {RoomView} v */
function trimView(v) {
  if (v.messages.size <= MAX_VIEW_MESSAGES) return;
  const seqs = [...v.messages.keys()].sort((a, b) => a - b);
  for (const seq of seqs.slice(0, seqs.length - MAX_VIEW_MESSAGES)) v.messages.delete(seq);
  v.oldest = seqs[seqs.length - MAX_VIEW_MESSAGES];
  v.more = true;
}

/** @param {string} roomId @param {number} seq @param {any} change */
function amend(roomId, seq, change) {
  const v = state.views.get(roomId);
  const m = v && v.messages.get(seq);
  if (!m) return;
  v.messages.set(seq, { ...m, ...change });
  if (roomId === state.current) renderMessages("keep");
}

/** Batch delivered receipts per room. @param {string} roomId @param {number} seq */
function noteDelivered(roomId, seq) {
  if ((state.delivered.get(roomId) ?? 0) >= seq) return;
  state.delivered.set(roomId, seq);
  if (state.deliveredTimer) return;
  state.deliveredTimer = setTimeout(() => {
    state.deliveredTimer = null;
    const client = state.client;
    for (const [room, position] of state.delivered) {
      if (client && state.rooms.has(room)) void client.ack(room, { delivered: position, wait: false }).catch(() => {});
    }
    state.delivered.clear();
  }, DELIVERED_BATCH_MS);
}

function canMarkRead() {
  return document.visibilityState === "visible" && atBottom();
}

/** Send the read position of the room shown, when the user can see its end. */
function markRead() {
  const id = state.current;
  const room = id && state.rooms.get(id);
  const v = id && state.views.get(id);
  if (!room || !v || !v.loaded || !state.client || !canMarkRead()) return;
  const highest = Math.max(0, ...v.messages.keys());
  if (highest <= (room.readSeq ?? 0)) {
    if (room.unread) {
      room.unread = 0;
      renderRooms();
    }
    return;
  }
  room.readSeq = highest;
  room.unread = 0;
  renderRooms();
  void state.client.ack(id, { read: highest, wait: false }).catch(() => {});
}

/** @param {any} e */
function onRead(e) {
  const room = state.rooms.get(e.room);
  if (!room) return;
  room.readSeq = Math.max(room.readSeq ?? 0, e.seq);
  room.unread = e.unread;
  renderRooms();
}

/** @param {any} e */
function onReceipts(e) {
  const v = state.views.get(e.room);
  if (!v) return;
  for (const r of e.users) {
    const m = v.members.get(r.user);
    v.members.set(r.user, { role: "member", ...m, user: r.user, read: r.read, delivered: r.delivered });
  }
  if (e.room === state.current) renderStates();
}

function timeline() {
  return $("timeline");
}

function atBottom() {
  const t = timeline();
  return t.scrollHeight - t.scrollTop - t.clientHeight <= BOTTOM_SLACK_PX;
}

/**
 * Draw the current room's messages.
 * @param {"bottom"|"top"|"keep"} scroll bottom: stick to the end; top: older
 *   messages were added above, keep what the user looks at in place; keep: as is
 */
function renderMessages(scroll) {
  const id = state.current;
  if (!id) return;
  const v = view(id);
  const t = timeline();
  const before = t.scrollHeight - t.scrollTop;
  const seqs = [...v.messages.keys()].sort((a, b) => a - b);
  // Entries are reused when unchanged (the list is an ARIA live log: screen
  // readers announce only what is new, and scrolling stays smooth).
  const list = $("messages");
  /** @type {Map<string, HTMLElement>} */
  const existing = new Map();
  for (const li of /** @type {HTMLCollectionOf<HTMLElement>} */ (list.children)) existing.set(li.dataset.key ?? "", li);
  let index = 0;
  let prev = null;
  const add = (m, pending) => {
    const cont = prev !== null && prev.sender === m.sender && Number(m.ts) - Number(prev.ts) < GROUP_MS;
    prev = m;
    const key = `${id}\n${pending ? `c${m.cid}` : `s${m.seq}`}`;
    const sig = `${cont}|${Boolean(m.deleted)}|${m.editedAt ?? ""}|${pending ? `p${pending.failed ?? ""}` : ""}`;
    let li = existing.get(key);
    if (li && li.dataset.sig === sig) existing.delete(key);
    else {
      li = messageItem(m, pending, cont);
      li.dataset.key = key;
      li.dataset.sig = sig;
    }
    if (list.children[index] !== li) list.insertBefore(li, list.children[index] ?? null);
    index += 1;
  };
  for (const seq of seqs) add(v.messages.get(seq), null);
  for (const p of v.pending.values()) {
    add({ seq: 0, cid: p.cid, sender: state.me, body: p.body, ts: p.ts, deleted: false }, p);
  }
  for (const li of existing.values()) li.remove();
  renderStates();
  $("load-older").hidden = !(v.loaded && v.more);
  $("history-start").hidden = !(v.loaded && !v.more);
  if (scroll === "bottom") t.scrollTop = t.scrollHeight;
  else if (scroll === "top") t.scrollTop = t.scrollHeight - before;
}

/**
 * @param {any} m
 * @param {{failed: string|null}|null} pending
 * @param {boolean} cont the previous message is the same sender's, just before
 */
function messageItem(m, pending, cont) {
  const mine = m.sender === state.me;
  const status = mine ? h("span", { class: "state" }) : null;
  const li = h(
    "li",
    {
      class: `message${mine ? " mine" : ""}${m.deleted ? " deleted" : ""}${cont ? " cont" : ""}`,
      "data-seq": m.seq || null,
      "data-cid": m.cid,
      "data-sender": m.sender,
    },
    [
      h("div", { class: "meta" }, [
        h("span", { class: "sender", text: mine ? "You" : m.sender }),
        h("time", { datetime: new Date(Number(m.ts)).toISOString(), text: clock(Number(m.ts)) }),
        m.editedAt && !m.deleted ? h("span", { text: "edited" }) : null,
        status,
      ]),
      h("div", { class: "body", text: m.deleted ? "Message deleted" : bodyText(m.body) }),
    ],
  );
  if (status) {
    if (pending) {
      setState(status, pending.failed ? "failed" : "sending", pending.failed ? `not sent: ${pending.failed}` : "sending");
      if (pending.failed) {
        status.append(" ", h("button", { type: "button", class: "quiet", text: "Retry", onclick: () => void retrySend(m.cid) }));
      }
    } else {
      applyReceipt(status, m.seq);
    }
  }
  return li;
}

/** @param {HTMLElement} el @param {string} value @param {string} label */
function setState(el, value, label) {
  el.dataset.state = value;
  el.textContent = label;
}

/** @param {HTMLElement} el @param {number} seq */
function applyReceipt(el, seq) {
  const v = view(/** @type {string} */ (state.current));
  const { state: s, readBy } = receiptState(seq, /** @type {string} */ (state.me), v.members.values());
  const label = s === "read" ? "read" : s === "delivered" ? "delivered" : "sent";
  setState(el, s, label);
  el.title = readBy.length ? `Read by ${readBy.join(", ")}` : label;
}

/** Refresh the delivered/read marks of my messages. */
function renderStates() {
  for (const li of $("messages").querySelectorAll("li.mine[data-seq]")) {
    const el = /** @type {HTMLElement|null} */ (li.querySelector(".state"));
    if (el) applyReceipt(el, Number(/** @type {HTMLElement} */ (li).dataset.seq));
  }
}

/** @param {string} text */
async function sendMessage(text) {
  const id = state.current;
  if (!id || !state.client) return;
  const cid = newCid();
  const body = { text };
  const v = view(id);
  v.pending.set(cid, { cid, body, ts: Date.now(), failed: null });
  renderMessages("bottom");
  await deliverSend(id, cid, body);
}

/** @param {string} id @param {string} cid @param {any} body */
async function deliverSend(id, cid, body) {
  const v = view(id);
  try {
    // The SDK resends it with the same cid across reconnects; `sent` adds it to the view.
    await state.client.send(id, body, { cid });
  } catch (err) {
    const p = v.pending.get(cid);
    if (p) p.failed = errorText(err);
    if (state.current === id) renderMessages("keep");
  }
}

/** @param {string} cid */
async function retrySend(cid) {
  const id = state.current;
  const p = id && view(id).pending.get(cid);
  if (!p) return;
  p.failed = null;
  renderMessages("keep");
  await deliverSend(/** @type {string} */ (id), cid, p.body);
}

// -- typing ----------------------------------------------------------------------

/** @param {any} e */
function onTyping(e) {
  const v = state.views.get(e.room) ?? (state.rooms.has(e.room) ? view(e.room) : null);
  if (!v) return;
  v.typing = e.users.filter((u) => u !== state.me);
  if (e.room === state.current) renderTyping();
}

function renderTyping() {
  const v = state.current ? state.views.get(state.current) : null;
  $("typing").textContent = v ? typingText(v.typing) : "";
}

function onComposerInput() {
  const id = state.current;
  const input = /** @type {HTMLTextAreaElement} */ ($("message-input"));
  if (!id || !state.client) return;
  if (!input.value.trim()) {
    stopTyping();
    return;
  }
  const now = Date.now();
  if (state.typingRoom !== id || now - state.typingSentAt >= TYPING_REFRESH_MS) {
    quietly(state.client.typing(id, true));
    state.typingRoom = id;
    state.typingSentAt = now;
  }
  if (state.typingStop) clearTimeout(state.typingStop);
  state.typingStop = setTimeout(stopTyping, TYPING_IDLE_MS);
}

function stopTyping() {
  if (state.typingStop) clearTimeout(state.typingStop);
  state.typingStop = null;
  if (state.typingRoom && state.client && !state.client.closed) quietly(state.client.typing(state.typingRoom, false));
  state.typingRoom = null;
  state.typingSentAt = 0;
}

// -- members and presence ---------------------------------------------------------

/** @param {any} e */
function onMember(e) {
  if (e.user === state.me && (e.action === "left" || e.action === "removed")) {
    dropRoom(e.room);
    renderRooms();
    return;
  }
  if (state.views.has(e.room)) void loadMembers(e.room);
}

/** @param {any} p */
function onPresence(p) {
  state.presence.set(p.user, p);
  const v = state.current ? state.views.get(state.current) : null;
  if (v && v.members.has(p.user)) renderMembers();
}

function renderMembers() {
  const v = state.current ? state.views.get(state.current) : null;
  if (!v) return;
  const rank = { online: 0, away: 1, offline: 2 };
  const members = [...v.members.values()].map((m) => {
    const presence = m.user === state.me ? { status: state.idle ? "away" : "online" } : state.presence.get(m.user);
    return { m, presence, status: presence?.status ?? "offline" };
  });
  members.sort((a, b) => rank[a.status] - rank[b.status] || a.m.user.localeCompare(b.m.user));
  $("members").replaceChildren(
    ...members.map(({ m, presence, status }) =>
      h("li", { class: "member", "data-user": m.user, "data-status": status }, [
        h("span", { class: "dot", "aria-hidden": "true" }),
        h("span", { class: "who" }, [
          m.user === state.me ? `${m.user} (you)` : m.user,
          m.role === "owner" ? h("span", { class: "role", text: " · owner" }) : null,
        ]),
        h("span", { class: "presence", text: presenceText(presence) }),
      ]),
    ),
  );
}

// -- presence of this device: idle after a while hidden or untouched --------------

function activity() {
  if (state.idleTimer) clearTimeout(state.idleTimer);
  state.idleTimer = setTimeout(() => setIdle(true), IDLE_AFTER_MS);
  if (state.idle && document.visibilityState === "visible") setIdle(false);
}

/** @param {boolean} idle */
function setIdle(idle) {
  if (state.idle === idle || !state.client || state.client.closed) return;
  state.idle = idle;
  void state.client.setIdle(idle).catch(() => {});
  renderMembers();
}

// -- calls -----------------------------------------------------------------------

/** @type {Map<string, {tile: HTMLElement, video: HTMLVideoElement, audio: HTMLAudioElement|null, stream: MediaStream, track: string|null}>} */
const tiles = new Map();
/** @type {ResizeObserver|null} */
let tileObserver = null;
/** @type {Map<Element, ReturnType<typeof setTimeout>>} */
const qualityTimers = new Map();

function renderCall() {
  const inCall = state.call !== null && state.call.room === state.current;
  // The call takes room from the timeline: keep the newest messages in view.
  const stick = atBottom();
  $("call").hidden = !inCall;
  if (stick) timeline().scrollTop = timeline().scrollHeight;
  const join = /** @type {HTMLButtonElement} */ ($("call-join"));
  join.hidden = inCall;
  join.disabled = state.call !== null;
  join.title = state.call && !inCall ? "You are in a call in another room" : "";
}

/** @param {string} text */
function callStatus(text) {
  $("call-status").textContent = text;
}

/** @param {string} key @param {string} caption @param {boolean} local */
function tileFor(key, caption, local) {
  let t = tiles.get(key);
  if (t) return t;
  const video = /** @type {HTMLVideoElement} */ (h("video", { autoplay: true, playsinline: true, muted: true }));
  video.muted = true; // audio plays from its own element; a muted video autoplays
  const name = h("span", { class: "name", text: caption });
  const flags = h("span", { class: "muted-flags" });
  const tile = h("figure", { class: `tile${local ? " local" : ""}`, "data-participant": key }, [
    video,
    h("figcaption", {}, [name, flags]),
  ]);
  $("tiles").append(tile);
  t = { tile, video, audio: null, stream: new MediaStream(), track: null };
  tiles.set(key, t);
  if (!local) {
    if (!tileObserver) tileObserver = new ResizeObserver(onTileResize);
    tileObserver.observe(video);
  }
  return t;
}

/** Tell the server at which size each remote video is shown (it picks the simulcast layer). */
function onTileResize(entries) {
  for (const entry of entries) {
    const el = entry.target;
    const prev = qualityTimers.get(el);
    if (prev) clearTimeout(prev);
    qualityTimers.set(
      el,
      setTimeout(() => {
        qualityTimers.delete(el);
        const t = [...tiles.values()].find((x) => x.video === el);
        if (!t || !t.track || !state.call) return;
        const scale = window.devicePixelRatio || 1;
        const rect = el.getBoundingClientRect();
        state.call.quality(t.track, rect.width * scale, rect.height * scale);
      }, 250),
    );
  }
}

/** @param {string} key */
function removeTile(key) {
  const t = tiles.get(key);
  if (!t) return;
  if (tileObserver) tileObserver.unobserve(t.video);
  t.video.srcObject = null;
  if (t.audio) t.audio.srcObject = null;
  t.tile.remove();
  tiles.delete(key);
}

/** @param {string} roomId */
function callSignaling(roomId) {
  const client = state.client;
  return {
    join: () => client.joinCall(roomId),
    leave: () => client.leaveCall(roomId),
    publish: (sdp) => client.publishCall(roomId, sdp),
    answer: (sdp) => client.answerCall(roomId, sdp),
    mute: (kind, muted) => client.muteCall(roomId, kind, muted),
    quality: (track, width, height) => quietly(client.setCallQuality(roomId, track, width, height)),
    restart: () => client.restartCall(roomId),
  };
}

const callView = {
  /** @param {MediaStream|null} stream */
  local(stream) {
    if (!stream) {
      removeTile("local");
      return;
    }
    const t = tileFor("local", `${state.me} (you)`, true);
    t.video.srcObject = stream;
    void t.video.play().catch(() => {});
  },
  /** @param {any} p PARTICIPANT (camelCase) */
  participant(p) {
    const call = state.call;
    const mine = call && p.id === call.participant;
    const t = mine ? tiles.get("local") : tileFor(p.id, p.user, false);
    if (!t) return;
    if (mine) t.tile.dataset.self = p.id;
    else t.tile.querySelector(".name").textContent = p.user;
    t.tile.dataset.audioMuted = String(Boolean(p.audioMuted));
    t.tile.dataset.videoMuted = String(Boolean(p.videoMuted));
    const flags = [p.audioMuted ? "🔇 muted" : "", p.videoMuted ? "camera off" : ""].filter(Boolean).join(" · ");
    t.tile.querySelector(".muted-flags").textContent = flags ? ` · ${flags}` : "";
    t.tile.setAttribute("aria-label", `${mine ? "You" : p.user}${flags ? `, ${flags}` : ""}`);
  },
  /** @param {string} id */
  participantLeft(id) {
    removeTile(id);
  },
  /** @param {string} participantId @param {MediaStreamTrack} track @param {string} trackId */
  remoteTrack(participantId, track, trackId) {
    const t = tileFor(participantId, state.call?.participants.get(participantId)?.user ?? "…", false);
    if (track.kind === "audio") {
      if (!t.audio) {
        t.audio = /** @type {HTMLAudioElement} */ (h("audio", { autoplay: true }));
        t.tile.append(t.audio);
      }
      t.audio.srcObject = new MediaStream([track]);
      void t.audio.play().catch(() => {});
      return;
    }
    for (const old of t.stream.getVideoTracks()) t.stream.removeTrack(old);
    t.stream.addTrack(track);
    t.track = trackId;
    t.video.srcObject = t.stream;
    void t.video.play().catch(() => {});
    if (tileObserver) {
      // Report the size now that a track is shown (the observer fires only on changes).
      tileObserver.unobserve(t.video);
      tileObserver.observe(t.video);
    }
    track.addEventListener("ended", () => {
      if (t.track === trackId) t.stream.removeTrack(track);
    });
  },
  /** @param {string|null} participantId */
  speaker(participantId) {
    const me = state.call?.participant;
    for (const [key, t] of tiles) {
      const id = key === "local" ? me : key;
      const speaking = participantId !== null && id === participantId;
      t.tile.classList.toggle("speaking", speaking);
      if (speaking) t.tile.setAttribute("aria-current", "true");
      else t.tile.removeAttribute("aria-current");
    }
  },
  /** @param {string} text */
  status(text) {
    callStatus(text);
  },
  /** @param {string} reason */
  ended(reason) {
    leaveCallLocally();
    $("room-error").textContent = `You left the call: ${reason}.`;
  },
};

async function joinCall() {
  const id = state.current;
  if (!id || !state.client || state.call) return;
  const call = new Call(id, /** @type {string} */ (state.me), callSignaling(id), callView);
  state.call = call;
  renderCall();
  setMuteButtons();
  try {
    await call.start();
  } catch (err) {
    const joined = call.participant !== null;
    leaveCallLocally();
    $("room-error").textContent = `Could not join the call: ${errorText(err)}`;
    // Joined, then publishing failed: do not stay in the call without media.
    if (joined) quietly(callSignaling(id).leave());
  }
}

async function leaveCall() {
  const call = state.call;
  if (!call) return;
  leaveCallLocally();
  try {
    await callSignaling(call.room).leave();
  } catch {
    // Not in the call any more (or disconnected): nothing to undo.
  }
}

function leaveCallLocally() {
  if (state.call) state.call.close();
  state.call = null;
  for (const key of [...tiles.keys()]) removeTile(key);
  callStatus("");
  renderCall();
}

/** @param {"audio"|"video"} kind */
async function toggleMute(kind) {
  const call = state.call;
  if (!call) return;
  const muted = kind === "audio" ? !call.audioMuted : !call.videoMuted;
  try {
    await call.setMuted(kind, muted);
  } catch (err) {
    callStatus(`could not ${muted ? "mute" : "unmute"}: ${errorText(err)}`);
  }
  setMuteButtons();
}

function setMuteButtons() {
  const call = state.call;
  const mic = $("call-mic");
  const cam = $("call-cam");
  const audioMuted = Boolean(call?.audioMuted);
  const videoMuted = Boolean(call?.videoMuted);
  mic.setAttribute("aria-pressed", String(audioMuted));
  mic.textContent = audioMuted ? "Unmute microphone" : "Mute microphone";
  cam.setAttribute("aria-pressed", String(videoMuted));
  cam.textContent = videoMuted ? "Turn camera on" : "Turn camera off";
  const local = tiles.get("local");
  if (local) local.tile.dataset.videoMuted = String(videoMuted);
}

// -- forms -----------------------------------------------------------------------

/** @param {unknown} err */
function errorText(err) {
  if (err instanceof RequestError) return err.reason || `error ${err.code}`;
  if (err instanceof Error) return err.message;
  return String(err);
}

/** @param {string} text */
function userList(text) {
  return text
    .split(/[\s,]+/)
    .map((s) => s.trim())
    .filter(Boolean);
}

/**
 * Run a sidebar action: errors go to the sidebar's alert, success opens the room.
 * @param {() => Promise<any>} action resolves with a room (SDK shape)
 * @param {HTMLFormElement} form
 */
async function roomAction(action, form) {
  $("sidebar-error").textContent = "";
  const buttons = form.querySelectorAll("button");
  buttons.forEach((b) => (b.disabled = true));
  try {
    const room = await action();
    upsertRoom({ unread: 0, readSeq: 0, ...state.rooms.get(room.id), ...room });
    form.reset();
    form.closest("details")?.removeAttribute("open");
    renderRooms();
    await openRoom(room.id);
  } catch (err) {
    $("sidebar-error").textContent = errorText(err);
  } finally {
    buttons.forEach((b) => (b.disabled = false));
  }
}

function bindPage() {
  const form = /** @type {HTMLFormElement} */ ($("signin-form"));
  const method = () => /** @type {HTMLInputElement} */ (form.querySelector("input[name=method]:checked")).value;
  form.addEventListener("change", () => {
    const byName = method() === "name";
    $("signin-token-field").hidden = byName;
    $("signin-name-field").hidden = !byName;
  });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (method() === "name") {
      const name = /** @type {HTMLInputElement} */ ($("signin-name")).value.trim();
      if (!name || name.includes(":") || name.length > 128) {
        $("signin-error").textContent = "Enter a user name of 1 to 128 characters, without ':'.";
        return;
      }
      void signIn(`dev:${name}`, true);
    } else {
      const token = /** @type {HTMLTextAreaElement} */ ($("signin-token")).value.trim();
      if (!token) {
        $("signin-error").textContent = "Paste your token.";
        return;
      }
      void signIn(token, false);
    }
  });
  $("signout").addEventListener("click", () => void signOut());

  $("create-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const name = /** @type {HTMLInputElement} */ ($("create-name")).value.trim();
    const kind = /** @type {HTMLSelectElement} */ ($("create-kind")).value;
    const members = userList(/** @type {HTMLInputElement} */ ($("create-members")).value);
    void roomAction(() => state.client.createRoom(name, { kind, members }), /** @type {HTMLFormElement} */ (ev.target));
  });
  $("join-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const id = /** @type {HTMLInputElement} */ ($("join-id")).value.trim();
    void roomAction(() => state.client.joinRoom(id), /** @type {HTMLFormElement} */ (ev.target));
  });
  $("dm-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const user = /** @type {HTMLInputElement} */ ($("dm-user")).value.trim();
    void roomAction(() => state.client.openDm(user), /** @type {HTMLFormElement} */ (ev.target));
  });
  $("invite-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const id = state.current;
    const input = /** @type {HTMLInputElement} */ ($("invite-user"));
    const user = input.value.trim();
    if (!id || !user || !state.client) return;
    $("room-error").textContent = "";
    try {
      await state.client.invite(id, user);
      input.value = "";
      await loadMembers(id);
    } catch (err) {
      $("room-error").textContent = `Could not invite ${user}: ${errorText(err)}`;
    }
  });
  $("leave-room").addEventListener("click", async () => {
    const id = state.current;
    const room = id && state.rooms.get(id);
    if (!room || !state.client) return;
    if (!confirm(`Leave ${roomTitle(room)}? You will need an invitation to come back to a private room.`)) return;
    try {
      await state.client.leaveRoom(id);
      dropRoom(id);
      renderRooms();
    } catch (err) {
      $("room-error").textContent = `Could not leave: ${errorText(err)}`;
    }
  });

  const input = /** @type {HTMLTextAreaElement} */ ($("message-input"));
  $("composer").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    stopTyping();
    void sendMessage(text);
  });
  input.addEventListener("input", onComposerInput);
  input.addEventListener("keydown", (ev) => {
    // Enter sends, Shift+Enter makes a new line.
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      $("composer").requestSubmit();
    }
  });

  const t = timeline();
  t.addEventListener("scroll", () => {
    const id = state.current;
    if (!id) return;
    if (t.scrollTop < TOP_SLACK_PX) void loadPage(id, "older");
    if (atBottom()) markRead();
  });
  $("load-older").addEventListener("click", () => state.current && void loadPage(state.current, "older"));

  $("members-toggle").addEventListener("click", () => {
    const open = $("app").classList.toggle("members-open");
    $("members-toggle").setAttribute("aria-expanded", String(open));
  });
  $("call-join").addEventListener("click", () => void joinCall());
  $("call-leave").addEventListener("click", () => void leaveCall());
  $("call-mic").addEventListener("click", () => void toggleMute("audio"));
  $("call-cam").addEventListener("click", () => void toggleMute("video"));

  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") {
      activity();
      markRead();
      // Tabs share one connection, and the server tells a connection nothing
      // about the rooms it created, joined or left itself: another tab of this
      // browser may have. Refresh the list when the user comes back to this one.
      if (state.client) void loadRooms();
    }
  });
  for (const type of ["pointerdown", "keydown", "focus"]) window.addEventListener(type, activity, { passive: true });
  // "last seen 5 minutes ago" ages while the page is open.
  setInterval(() => state.current && renderMembers(), 30_000);
  activity();
}

bindPage();
// A debugging handle (also used by the end-to-end tests): the SDK client and call stats.
Object.defineProperty(window, "tetherApp", {
  value: Object.freeze({
    client: () => state.client,
    callStats: () => (state.call ? state.call.stats() : Promise.resolve(null)),
  }),
});
const saved = localStorage.getItem(TOKEN_KEY);
if (saved) void signIn(saved, saved.startsWith("dev:"));
