// The SDK's msgpack codec: round trips, the exact encodings of every size
// class, and the input it must refuse.
import assert from "node:assert/strict";
import { test } from "node:test";

import { MsgpackError, decode, encode } from "../../tether/web/sdk/msgpack.js";

/** @param {string} hex */
const bytes = (hex) => Uint8Array.from(hex.replace(/\s+/g, "").match(/../g) ?? [], (h) => parseInt(h, 16));
/** @param {Uint8Array} b */
const hex = (b) => Buffer.from(b).toString("hex");

test("integers use the smallest encoding, and decode back", () => {
  const cases = [
    [0, "00"],
    [127, "7f"],
    [128, "cc80"],
    [255, "ccff"],
    [256, "cd0100"],
    [65535, "cdffff"],
    [65536, "ce00010000"],
    [4294967295, "ceffffffff"],
    [4294967296, "cf0000000100000000"],
    [Number.MAX_SAFE_INTEGER, "cf001fffffffffffff"],
    [-1, "ff"],
    [-32, "e0"],
    [-33, "d0df"],
    [-128, "d080"],
    [-129, "d1ff7f"],
    [-32768, "d18000"],
    [-32769, "d2ffff7fff"],
    [-2147483648, "d280000000"],
    [-2147483649, "d3ffffffff7fffffff"],
    [Number.MIN_SAFE_INTEGER, "d3ffe0000000000001"],
  ];
  for (const [value, expected] of cases) {
    assert.equal(hex(encode(value)), expected, `encode ${value}`);
    assert.equal(decode(bytes(expected)), value, `decode ${expected}`);
  }
});

test("64-bit integers beyond 2^53 are BigInt, both ways", () => {
  const max = 2n ** 64n - 1n;
  const min = -(2n ** 63n);
  assert.equal(hex(encode(max)), "cfffffffffffffffff");
  assert.equal(decode(encode(max)), max);
  assert.equal(hex(encode(min)), "d38000000000000000");
  assert.equal(decode(encode(min)), min);
  assert.equal(decode(bytes("cf0020000000000000")), 2n ** 53n);
  // A BigInt that is a safe integer encodes like the number.
  assert.equal(hex(encode(5n)), "05");
  assert.throws(() => encode(2n ** 64n), MsgpackError);
  assert.throws(() => encode(min - 1n), MsgpackError);
});

test("floats are float64; float32 is read", () => {
  assert.equal(hex(encode(1.5)), "cb3ff8000000000000");
  assert.equal(decode(encode(0.1)), 0.1);
  assert.ok(Number.isNaN(decode(encode(NaN))));
  assert.equal(decode(encode(Infinity)), Infinity);
  assert.ok(Object.is(decode(encode(-0)), -0));
  assert.equal(decode(bytes("ca3fc00000")), 1.5);
  // An integer beyond 2^53 held in a Number may have lost precision: a float.
  assert.equal(hex(encode(2 ** 60)).slice(0, 2), "cb");
});

test("strings: every length class, UTF-8 both ways", () => {
  for (const [length, prefix] of [
    [0, "a0"],
    [31, "bf"],
    [32, "d920"],
    [255, "d9ff"],
    [256, "da0100"],
    [65536, "db00010000"],
  ]) {
    const s = "x".repeat(length);
    const encoded = encode(s);
    assert.equal(hex(encoded.subarray(0, prefix.length / 2)), prefix);
    assert.equal(decode(encoded), s);
  }
  const text = "héllo wörld ✓ 🎉";
  assert.equal(decode(encode(text)), text);
  assert.equal(hex(encode("é")), "a2c3a9");
  assert.throws(() => decode(bytes("a2c328")), MsgpackError, "invalid UTF-8 is refused");
});

test("binary, nil, booleans, undefined", () => {
  const bin = new Uint8Array([0, 1, 2, 255]);
  assert.equal(hex(encode(bin)), "c404000102ff");
  assert.deepEqual(decode(encode(bin)), bin);
  assert.deepEqual(decode(encode(new Uint8Array(300))), new Uint8Array(300));
  assert.equal(hex(encode(new Uint8Array(70000)).subarray(0, 5)), "c600011170");
  assert.deepEqual(decode(encode(bin.buffer)), bin, "an ArrayBuffer is bin");
  assert.equal(hex(encode(null)), "c0");
  assert.equal(hex(encode(undefined)), "c0");
  assert.equal(hex(encode(true)), "c3");
  assert.equal(hex(encode(false)), "c2");
  assert.equal(decode(bytes("c0")), null);
});

test("arrays and maps, small and large; undefined map values are left out", () => {
  const value = { t: "msg", list: [1, "two", [3, { four: 4 }]], empty: {}, none: [], skip: undefined };
  const decoded = decode(encode(value));
  assert.deepEqual(decoded, { t: "msg", list: [1, "two", [3, { four: 4 }]], empty: {}, none: [] });
  const big = Array.from({ length: 70000 }, (_, i) => i);
  assert.deepEqual(decode(encode(big)), big);
  assert.equal(hex(encode(Array(16).fill(0)).subarray(0, 3)), "dc0010");
  const wide = Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`k${i}`, i]));
  assert.equal(hex(encode(wide).subarray(0, 3)), "de0014");
  assert.deepEqual(decode(encode(wide)), wide);
  // A map with a non-str key decodes as a Map.
  const mixed = decode(bytes("82a161010203"));
  assert.ok(mixed instanceof Map);
  assert.equal(mixed.get("a"), 1);
  assert.equal(mixed.get(2), 3);
  assert.deepEqual(decode(encode(new Map([["x", 1]]))), { x: 1 });
  // "__proto__" is an own key, never the prototype.
  const proto = decode(encode(new Map([["__proto__", { polluted: true }]])));
  assert.equal(Object.getPrototypeOf(proto), Object.prototype);
  assert.deepEqual(Object.keys(proto), ["__proto__"]);
  assert.equal(/** @type {any} */ ({}).polluted, undefined);
});

test("the protocol's annotated frames decode and re-encode byte for byte", () => {
  // docs/protocol.md, "Annotated frames": hello, ping, msg.send reply.
  const hello = "85a174a568656c6c6fa3726566 01 a5746f6b656eab6162632e6465662e676869 a6646576696365ab6c6170746f702d37663361 a6636c69656e74ad7465746865722d6a732f302e31";
  assert.deepEqual(decode(bytes(hello)), { t: "hello", ref: 1, token: "abc.def.ghi", device: "laptop-7f3a", client: "tether-js/0.1" });
  assert.equal(hex(encode(decode(bytes(hello)))), hello.replace(/\s+/g, ""));
  assert.equal(hex(encode({ t: "pong", n: 42 })), "82a174a4706f6e67a16e2a");
  const reply = "83a174a57265706c79a372656604a46461746183a37365710 1a27473cf0000019b78c9f4e0a3647570c2".replace(/\s+/g, "");
  assert.deepEqual(decode(bytes(reply)), { t: "reply", ref: 4, data: { seq: 1, ts: 1767258060000, dup: false } });
  assert.equal(hex(encode(decode(bytes(reply)))), reply);
});

test("refused input: truncation, trailing bytes, ext types, 0xc1, depth, unencodable values", () => {
  for (const bad of ["", "cd01", "a3616263".slice(0, 6), "92 01", "dc0003 01 02", "c40301", "cb3ff8"]) {
    assert.throws(() => decode(bytes(bad)), MsgpackError, `truncated ${bad}`);
  }
  assert.throws(() => decode(bytes("0101")), MsgpackError, "trailing bytes");
  for (const ext of ["d40100", "d5010000", "d601 00000000", "d701 0000000000000000", "d801" + "00".repeat(16), "c70101 00", "c8000101 00", "c900000001 01 00"]) {
    assert.throws(() => decode(bytes(ext)), /extension/, `ext ${ext}`);
  }
  assert.throws(() => decode(bytes("c1")), MsgpackError);
  // A length larger than the input is refused before allocating for it.
  assert.throws(() => decode(bytes("ddffffffff")), MsgpackError);
  assert.throws(() => decode(bytes("dfffffffff")), MsgpackError);
  let deep = [];
  for (let i = 0; i < 70; i++) deep = [deep];
  assert.throws(() => encode(deep), /nested too deep/);
  assert.throws(() => decode(bytes("91".repeat(70) + "90")), /nested too deep/);
  assert.deepEqual(decode(bytes("91".repeat(3) + "90"), { maxDepth: 4 }), [[[[]]]]);
  assert.throws(() => decode(bytes("91".repeat(4) + "90"), { maxDepth: 4 }), /nested too deep/);
  assert.throws(() => decode(bytes("dc0003010203"), { maxItems: 2 }), /exceeds the limit/);
  assert.throws(() => encode(() => 1), MsgpackError);
  assert.throws(() => encode(Symbol("s")), MsgpackError);
  assert.throws(() => encode(new Date()), MsgpackError);
  assert.throws(() => decode("not bytes"), MsgpackError);
});

test("random values round-trip", () => {
  let seed = 12345;
  const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  /** @returns {any} */
  const gen = (depth) => {
    const pick = Math.floor(rand() * (depth > 3 ? 6 : 8));
    switch (pick) {
      case 0: return null;
      case 1: return rand() < 0.5;
      case 2: return Math.floor((rand() - 0.5) * 2 ** (rand() * 53));
      case 3: return rand() * 1e6;
      case 4: return "s".repeat(Math.floor(rand() * 40)) + String.fromCodePoint(Math.floor(rand() * 0xd000));
      case 5: return Uint8Array.from({ length: Math.floor(rand() * 10) }, () => Math.floor(rand() * 256));
      case 6: return Array.from({ length: Math.floor(rand() * 5) }, () => gen(depth + 1));
      default: return Object.fromEntries(Array.from({ length: Math.floor(rand() * 5) }, (_, i) => [`k${i}`, gen(depth + 1)]));
    }
  };
  for (let i = 0; i < 2000; i++) {
    const value = gen(0);
    assert.deepEqual(decode(encode(value)), Object.is(value, -0) ? 0 : value);
  }
});
