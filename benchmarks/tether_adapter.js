'use strict';
// bench-peers load-generator adapter for tether (msgpack over WebSocket,
// subprotocol tether.v1; see docs/protocol.md). Copy it to
// <bench-peers copy>/loadgen/adapters/tether.js; benchmarks/README.md has the steps.
//
// Mapping of the adapter contract onto tether's protocol:
// - connect: open <url>/ws, send `hello` with an HS256 token minted here for a
//   fresh user per connection (secret: the TETHER_SECRET environment variable,
//   which `tether serve` also reads). With a room, the first client of this
//   process to name it creates it (`room.create`, public) and every other client
//   joins it (`room.join`); resolve once the answer arrived, i.e. when the
//   client is a member and receives the room's pushes.
// - publish(msg): `msg.send` to the room with the bench message as the body,
//   at most `max_in_flight` (from `welcome`, default 128) unanswered; further
//   messages wait in a bounded queue. A publish-only client (room == null)
//   joins the room on its first publish (tether lets only members post).
// - deliver: the `msg` push's body. tether does not push a message back to the
//   connection that sent it (that connection gets the reply); when the sender
//   is itself subscribed to the room (W2: "sender included"), the reply stands
//   for its copy and the message is handed to onMessage then. A publish-only
//   client is not counted as a receiver by the load generator, so its replies
//   deliver nothing.
// - heartbeats: every server `ping` is answered with `pong`.
const crypto = require('crypto');
const WebSocket = require('ws');
const { Encoder, Decoder } = require('@msgpack/msgpack');

const SUBPROTOCOL = 'tether.v1';
const TOKEN_TTL_S = Number(process.env.TETHER_TOKEN_TTL_S || 7200);
// Messages one client may hold back while its in-flight window is full; past
// it they are dropped, and the load generator counts them as lost.
const MAX_QUEUED = 10000;
const DEFAULT_MAX_IN_FLIGHT = 128;

const encoder = new Encoder();
const decoder = new Decoder();
const userPrefix = `bp${process.pid}-`;
let users = 0;
// Load-generator room name -> Promise of the tether room id (created once per process).
const roomIds = new Map();
// msg.send errors by code, reported on stderr at exit.
const sendErrors = new Map();
let dropped = 0;

process.on('exit', () => {
  if (sendErrors.size || dropped) {
    const codes = [...sendErrors].map(([code, n]) => `${code}: ${n}`).join(', ');
    console.error(`[tether adapter] msg.send errors {${codes}}, dropped while queued: ${dropped}`);
  }
});

// -- reading `msg` pushes in place -------------------------------------------
// Receiving is the load generator's hot path. A full decode of a `msg` push
// costs ~1.5 us here; walking the map and reading just the body's seq, step
// and ts costs ~0.35 us. Frames of any other shape take the full decode.
// Position just after the msgpack value starting at i, or -1 for a type we do not walk.
function skip(buf, i) {
  const b = buf[i];
  if (b <= 0x7f || b >= 0xe0 || b === 0xc0 || b === 0xc2 || b === 0xc3) return i + 1;
  if (b >= 0xa0 && b <= 0xbf) return i + 1 + (b & 0x1f);
  if (b >= 0x80 && b <= 0x8f) return skipMany(buf, i + 1, (b & 0x0f) * 2);
  if (b >= 0x90 && b <= 0x9f) return skipMany(buf, i + 1, b & 0x0f);
  switch (b) {
    case 0xcc: case 0xd0: return i + 2;
    case 0xcd: case 0xd1: return i + 3;
    case 0xce: case 0xd2: case 0xca: return i + 5;
    case 0xcf: case 0xd3: case 0xcb: return i + 9;
    case 0xd9: return i + 2 + buf[i + 1];
    case 0xda: return i + 3 + buf.readUInt16BE(i + 1);
    case 0xdb: return i + 5 + buf.readUInt32BE(i + 1);
    case 0xde: return skipMany(buf, i + 3, buf.readUInt16BE(i + 1) * 2);
    case 0xdc: return skipMany(buf, i + 3, buf.readUInt16BE(i + 1));
    default: return -1;
  }
}
function skipMany(buf, i, n) {
  for (let k = 0; k < n && i >= 0; k++) i = skip(buf, i);
  return i;
}
// The number at i (NaN if the value there is not a number).
function number(buf, i) {
  const b = buf[i];
  if (b <= 0x7f) return b;
  if (b >= 0xe0) return b - 0x100;
  switch (b) {
    case 0xcb: return buf.readDoubleBE(i + 1);
    case 0xca: return buf.readFloatBE(i + 1);
    case 0xcc: return buf[i + 1];
    case 0xcd: return buf.readUInt16BE(i + 1);
    case 0xce: return buf.readUInt32BE(i + 1);
    case 0xcf: return Number(buf.readBigUInt64BE(i + 1));
    case 0xd0: return buf.readInt8(i + 1);
    case 0xd1: return buf.readInt16BE(i + 1);
    case 0xd2: return buf.readInt32BE(i + 1);
    case 0xd3: return Number(buf.readBigInt64BE(i + 1));
    default: return NaN;
  }
}
// Is the fixstr key at i equal to the ASCII name?
function isKey(buf, i, name) {
  if (buf[i] !== (0xa0 | name.length)) return false;
  for (let k = 0; k < name.length; k++) if (buf[i + 1 + k] !== name.charCodeAt(k)) return false;
  return true;
}
// {seq, step, ts} of the body of a `msg` push, read in place; null when the
// frame is not a msg push or its body is not a flat map of that shape.
function leanMsgBody(buf) {
  const head = buf[0];
  if (head < 0x80 || head > 0x8f) return null;
  let i = 1;
  let body = -1;
  let isMsg = false;
  for (let n = head & 0x0f; n > 0 && i >= 0; n--) {
    if (isKey(buf, i, 't')) { isMsg = isKey(buf, i + 2, 'msg'); if (!isMsg) return null; }
    else if (isKey(buf, i, 'body')) body = i + 5;
    i = skip(buf, i);
    if (i < 0) return null;
    i = skip(buf, i);
  }
  if (!isMsg || body < 0) return null;
  const bh = buf[body];
  if (bh < 0x80 || bh > 0x8f) return null;
  let seq = NaN, step = NaN, ts = NaN;
  i = body + 1;
  for (let n = bh & 0x0f; n > 0; n--) {
    const k = i;
    i = skip(buf, i);
    if (i < 0) return null;
    if (isKey(buf, k, 'seq')) seq = number(buf, i);
    else if (isKey(buf, k, 'step')) step = number(buf, i);
    else if (isKey(buf, k, 'ts')) ts = number(buf, i);
    i = skip(buf, i);
    if (i < 0) return null;
  }
  return Number.isNaN(seq) || Number.isNaN(step) || Number.isNaN(ts) ? null : { seq, step, ts };
}

function mintToken(user) {
  const secret = process.env.TETHER_SECRET;
  if (!secret) throw new Error('TETHER_SECRET is not set (the secret of the tether server)');
  const now = Math.floor(Date.now() / 1000);
  const part = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
  const signed = `${part({ alg: 'HS256', typ: 'JWT' })}.${part({ sub: user, iat: now, exp: now + TOKEN_TTL_S })}`;
  const signature = crypto.createHmac('sha256', Buffer.from(secret, 'utf8')).update(signed).digest('base64url');
  return `${signed}.${signature}`;
}

function wsUrl(url) {
  const u = new URL(url);
  if (u.pathname === '/' || u.pathname === '') u.pathname = '/ws';
  return u.toString();
}

function replyData(answer, what) {
  if (answer.t !== 'reply') throw new Error(`${what} refused: ${answer.code} ${answer.reason}`);
  return answer.data;
}

module.exports = {
  name: 'tether',
  connect({ url, room, localAddress, timeoutMs }, onMessage, onClose) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(wsUrl(url), SUBPROTOCOL, {
        localAddress,
        perMessageDeflate: false,
        handshakeTimeout: timeoutMs,
      });
      const pending = new Map(); // ref -> callback(answer)
      const member = new Map(); // room name -> tether room id (rooms this client is in)
      const joining = new Map(); // room name -> messages waiting for the join
      const queue = []; // messages waiting for a free in-flight slot
      let lastRef = 0;
      let maxInFlight = DEFAULT_MAX_IN_FLIGHT;
      let inFlight = 0;
      let cid = 0;
      let ready = false;
      let failed = false;
      const timer = setTimeout(() => fail(new Error('tether set-up timed out')), timeoutMs);

      function fail(err) {
        if (ready || failed) return;
        failed = true;
        clearTimeout(timer);
        ws.terminate();
        reject(err);
      }

      function nextRef() {
        lastRef = lastRef >= 0xffffffff ? 1 : lastRef + 1;
        return lastRef;
      }

      function request(frame) {
        return new Promise((done) => {
          const ref = nextRef();
          pending.set(ref, done);
          ws.send(encoder.encode({ ...frame, ref }));
        });
      }

      // The tether id of a room, creating it if this process has not yet.
      function enter(name) {
        let id = roomIds.get(name);
        if (!id) {
          id = request({ t: 'room.create', name, kind: 'public' }).then((a) => replyData(a, 'room.create').room.id);
          roomIds.set(name, id);
          return id;
        }
        return id.then((roomId) =>
          request({ t: 'room.join', room: roomId }).then((a) => {
            replyData(a, 'room.join');
            return roomId;
          }),
        );
      }

      function sendMessage(roomId, msg) {
        inFlight++;
        const ref = nextRef();
        const self = msg.room === room ? msg : null;
        pending.set(ref, (answer) => {
          inFlight--;
          if (answer.t === 'reply') {
            if (self) onMessage(self);
          } else {
            sendErrors.set(answer.code, (sendErrors.get(answer.code) || 0) + 1);
          }
          while (queue.length && inFlight < maxInFlight) {
            const next = queue.shift();
            sendMessage(member.get(next.room), next);
          }
        });
        ws.send(encoder.encode({ t: 'msg.send', ref, room: roomId, cid: String(++cid), body: msg }));
      }

      function publish(msg) {
        const roomId = member.get(msg.room);
        if (roomId === undefined) {
          joinThenPublish(msg);
        } else if (inFlight < maxInFlight) {
          sendMessage(roomId, msg);
        } else if (queue.length < MAX_QUEUED) {
          queue.push(msg);
        } else {
          dropped++;
        }
      }

      function joinThenPublish(msg) {
        const waiting = joining.get(msg.room);
        if (waiting) {
          if (waiting.length < MAX_QUEUED) waiting.push(msg);
          else dropped++;
          return;
        }
        joining.set(msg.room, [msg]);
        enter(msg.room).then(
          (roomId) => {
            member.set(msg.room, roomId);
            const held = joining.get(msg.room) || [];
            joining.delete(msg.room);
            for (const m of held) publish(m);
          },
          (err) => {
            console.error(`[tether adapter] cannot publish to ${msg.room}: ${err.message}`);
            dropped += (joining.get(msg.room) || []).length;
            joining.delete(msg.room);
          },
        );
      }

      ws.on('open', () => {
        request({ t: 'hello', token: mintToken(userPrefix + users++), device: 'loadgen', client: 'bench-peers/tether' })
          .then((answer) => {
            if (answer.t !== 'welcome') throw new Error(`hello refused: ${answer.code} ${answer.reason}`);
            const limit = answer.limits && answer.limits.max_in_flight;
            if (Number.isInteger(limit) && limit > 0) maxInFlight = limit;
            return room == null ? null : enter(room);
          })
          .then((roomId) => {
            if (failed) return;
            if (roomId != null) member.set(room, roomId);
            ready = true;
            clearTimeout(timer);
            resolve({ publish, close: () => ws.terminate() });
          })
          .catch(fail);
      });
      ws.on('message', (data, isBinary) => {
        if (!isBinary) return;
        let body = null;
        try {
          body = leanMsgBody(data);
        } catch (err) {
          body = null; // cut short: let the full decoder judge it
        }
        if (body) {
          onMessage(body);
          return;
        }
        let frame;
        try {
          frame = decoder.decode(data);
        } catch (err) {
          return; // not msgpack: the server never sends such frames
        }
        switch (frame.t) {
          case 'msg':
            onMessage(frame.body);
            break;
          case 'ping':
            ws.send(encoder.encode({ t: 'pong', n: frame.n }));
            break;
          case 'welcome':
          case 'reply':
          case 'error': {
            const done = pending.get(frame.ref);
            if (done) {
              pending.delete(frame.ref);
              done(frame);
            }
            break;
          }
          default: // member, room, receipts, typing, presence: not part of the workloads
        }
      });
      ws.on('error', (err) => fail(err));
      ws.on('close', (code) => {
        if (ready) onClose();
        else fail(new Error(`closed with ${code} during set-up`));
      });
    });
  },
};
