// Pure helpers of the web app: text of message bodies, relative times, receipt
// states. No DOM and no network here, so they are easy to reason about.

/**
 * The text to show for a message body. Bodies are any msgpack value: the app
 * sends `{text}` maps, other clients may send plain strings or other maps.
 * @param {unknown} body
 * @returns {string}
 */
export function bodyText(body) {
  if (body === null || body === undefined) return "";
  if (typeof body === "string") return body;
  if (typeof body === "object" && !Array.isArray(body) && typeof body.text === "string") return body.text;
  try {
    return JSON.stringify(body, (_k, v) => (typeof v === "bigint" ? String(v) : v));
  } catch {
    return String(body);
  }
}

/**
 * "just now", "5 minutes ago", "3 hours ago", "2 days ago", or a date.
 * @param {number} thenMs ms since the epoch
 * @param {number} [nowMs]
 * @returns {string}
 */
export function ago(thenMs, nowMs = Date.now()) {
  const s = Math.max(0, Math.round((nowMs - thenMs) / 1000));
  if (s < 45) return "just now";
  const m = Math.round(s / 60);
  if (m < 60) return m === 1 ? "1 minute ago" : `${m} minutes ago`;
  const h = Math.round(m / 60);
  if (h < 24) return h === 1 ? "1 hour ago" : `${h} hours ago`;
  const d = Math.round(h / 24);
  if (d < 7) return d === 1 ? "yesterday" : `${d} days ago`;
  return new Date(thenMs).toLocaleDateString();
}

/**
 * Clock time of a message, e.g. "14:05".
 * @param {number} ms
 * @returns {string}
 */
export function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/**
 * What a presence event (SDK shape) reads as next to a member's name.
 * @param {{status: string, lastSeen?: number|null} | undefined} presence
 * @param {number} [nowMs]
 * @returns {string}
 */
export function presenceText(presence, nowMs = Date.now()) {
  if (!presence) return "offline";
  if (presence.status === "online") return "online";
  if (presence.status === "away") return "away";
  if (presence.lastSeen) return `offline · last seen ${ago(Number(presence.lastSeen), nowMs)}`;
  return "offline";
}

/**
 * Receipt state of one of my messages: "read" once every other member read
 * it, "delivered" once it reached a device of every other member, else "sent".
 * A room where I am alone counts my message as sent.
 * @param {number} seq
 * @param {string} me
 * @param {Iterable<{user: string, read: number, delivered: number}>} members
 * @returns {{state: "sent"|"delivered"|"read", readBy: string[]}}
 */
export function receiptState(seq, me, members) {
  const others = [...members].filter((m) => m.user !== me);
  const readBy = others.filter((m) => m.read >= seq).map((m) => m.user);
  if (others.length === 0) return { state: "sent", readBy };
  if (readBy.length === others.length) return { state: "read", readBy };
  // A read position also counts as delivered.
  if (others.every((m) => Math.max(m.delivered, m.read) >= seq)) return { state: "delivered", readBy };
  return { state: "sent", readBy };
}

/**
 * "bob is typing…", "bob and carol are typing…", "3 people are typing…".
 * @param {string[]} users already without me
 * @returns {string}
 */
export function typingText(users) {
  if (users.length === 0) return "";
  if (users.length === 1) return `${users[0]} is typing…`;
  if (users.length === 2) return `${users[0]} and ${users[1]} are typing…`;
  return `${users.length} people are typing…`;
}

/**
 * A short key naming a token's shared connection (16 hex characters): two FNV-1a
 * 32-bit hashes with different seeds. Not a secret and not for security: it only
 * keeps tabs signed in with different tokens apart, without depending on
 * crypto.subtle (which plain-http pages other than localhost lack).
 * @param {string} text
 * @returns {string}
 */
export function shortKey(text) {
  let a = 0x811c9dc5;
  let b = 0x01000193 ^ 0x5bd1e995;
  for (let i = 0; i < text.length; i += 1) {
    const c = text.charCodeAt(i);
    a = Math.imul(a ^ c, 0x01000193) >>> 0;
    b = Math.imul(b ^ c, 0x01000193 ^ 0x27d4eb2d) >>> 0;
  }
  return a.toString(16).padStart(8, "0") + b.toString(16).padStart(8, "0");
}
