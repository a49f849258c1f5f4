// A small MessagePack codec for the tether protocol (tether.v1).
//
// It covers the subset of MessagePack that tether uses: nil, bool, int (up to
// 64 bits), float (float64 written; float32 also read), str, bin, array and map.
// Extension types (including the timestamp extension) are rejected in both
// directions, as protocol v1 forbids them. See docs/design.md for why tether
// ships its own codec instead of a third-party library.

/**
 * Raised for input that cannot be encoded or decoded.
 */
export class MsgpackError extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = "MsgpackError";
  }
}

const UTF8_ENCODER = new TextEncoder();
// fatal: invalid UTF-8 in a str is an error, never silently replaced.
const UTF8_DECODER = new TextDecoder("utf-8", { fatal: true });

const UINT32_LIMIT = 0x100000000;
const INT64_MIN = -(2n ** 63n);
const UINT64_MAX = 2n ** 64n - 1n;

/**
 * @typedef {object} EncodeOptions
 * @property {number} [maxDepth] containers nested deeper than this are refused (default 64)
 */

/**
 * @typedef {object} DecodeOptions
 * @property {number} [maxDepth] containers nested deeper than this are refused (default 64)
 * @property {number} [maxItems] an array or map announcing more entries than this is refused (default 1_000_000)
 */

const DEFAULT_MAX_DEPTH = 64;
const DEFAULT_MAX_ITEMS = 1_000_000;

class Writer {
  constructor() {
    this.buf = new Uint8Array(256);
    this.view = new DataView(this.buf.buffer);
    this.pos = 0;
  }

  /** @param {number} n bytes about to be written */
  ensure(n) {
    const need = this.pos + n;
    if (need <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < need) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }

  /** @param {number} b */
  u8(b) {
    this.ensure(1);
    this.buf[this.pos++] = b;
  }

  /** @param {number} tag @param {number} v */
  u8tag(tag, v) {
    this.ensure(2);
    this.buf[this.pos++] = tag;
    this.buf[this.pos++] = v;
  }

  /** @param {number} tag @param {number} v */
  u16(tag, v) {
    this.ensure(3);
    this.buf[this.pos++] = tag;
    this.view.setUint16(this.pos, v);
    this.pos += 2;
  }

  /** @param {number} tag @param {number} v */
  u32(tag, v) {
    this.ensure(5);
    this.buf[this.pos++] = tag;
    this.view.setUint32(this.pos, v);
    this.pos += 4;
  }

  /** @param {number} tag @param {bigint} v */
  u64(tag, v) {
    this.ensure(9);
    this.buf[this.pos++] = tag;
    this.view.setBigUint64(this.pos, BigInt.asUintN(64, v));
    this.pos += 8;
  }

  /** @param {number} v */
  f64(v) {
    this.ensure(9);
    this.buf[this.pos++] = 0xcb;
    this.view.setFloat64(this.pos, v);
    this.pos += 8;
  }

  /** @param {Uint8Array} bytes */
  raw(bytes) {
    this.ensure(bytes.length);
    this.buf.set(bytes, this.pos);
    this.pos += bytes.length;
  }

  result() {
    return this.buf.slice(0, this.pos);
  }
}

/**
 * @param {Writer} w
 * @param {number} v a safe integer
 */
function writeSafeInt(w, v) {
  if (v >= 0) {
    if (v < 0x80) w.u8(v);
    else if (v < 0x100) w.u8tag(0xcc, v);
    else if (v < 0x10000) w.u16(0xcd, v);
    else if (v < UINT32_LIMIT) w.u32(0xce, v);
    else w.u64(0xcf, BigInt(v));
  } else {
    if (v >= -32) w.u8(v & 0xff);
    else if (v >= -0x80) w.u8tag(0xd0, v & 0xff);
    else if (v >= -0x8000) w.u16(0xd1, v & 0xffff);
    else if (v >= -0x80000000) w.u32(0xd2, v >>> 0);
    else w.u64(0xd3, BigInt(v));
  }
}

/**
 * @param {Writer} w
 * @param {bigint} v
 */
function writeBigInt(w, v) {
  if (v < INT64_MIN || v > UINT64_MAX) {
    throw new MsgpackError(`integer ${v} does not fit 64 bits`);
  }
  if (v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER)) {
    writeSafeInt(w, Number(v));
  } else if (v > 0n) {
    w.u64(0xcf, v);
  } else {
    w.u64(0xd3, v);
  }
}

/**
 * @param {Writer} w
 * @param {string} s
 */
function writeStr(w, s) {
  const bytes = UTF8_ENCODER.encode(s);
  const n = bytes.length;
  if (n < 32) w.u8(0xa0 | n);
  else if (n < 0x100) w.u8tag(0xd9, n);
  else if (n < 0x10000) w.u16(0xda, n);
  else if (n < UINT32_LIMIT) w.u32(0xdb, n);
  else throw new MsgpackError("string too long");
  w.raw(bytes);
}

/**
 * @param {Writer} w
 * @param {Uint8Array} bytes
 */
function writeBin(w, bytes) {
  const n = bytes.length;
  if (n < 0x100) w.u8tag(0xc4, n);
  else if (n < 0x10000) w.u16(0xc5, n);
  else if (n < UINT32_LIMIT) w.u32(0xc6, n);
  else throw new MsgpackError("binary too long");
  w.raw(bytes);
}

/**
 * @param {Writer} w
 * @param {number} n
 * @param {number} fix
 * @param {number} tag16
 */
function writeContainerHeader(w, n, fix, tag16) {
  if (n < 16) w.u8(fix | n);
  else if (n < 0x10000) w.u16(tag16, n);
  else if (n < UINT32_LIMIT) w.u32(tag16 + 1, n);
  else throw new MsgpackError("container too large");
}

/**
 * @param {unknown} v
 * @returns {v is Record<string, unknown>}
 */
function isPlainObject(v) {
  if (typeof v !== "object" || v === null) return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

/**
 * @param {Writer} w
 * @param {unknown} v
 * @param {number} depth remaining nesting allowance
 */
function writeValue(w, v, depth) {
  switch (typeof v) {
    case "undefined":
      w.u8(0xc0);
      return;
    case "boolean":
      w.u8(v ? 0xc3 : 0xc2);
      return;
    case "number":
      // Safe integers are ints; anything else (fractions, NaN, ±Infinity, -0,
      // integers beyond 2^53 that may already have lost precision) is a float64.
      if (Number.isSafeInteger(v) && !Object.is(v, -0)) writeSafeInt(w, v);
      else w.f64(v);
      return;
    case "bigint":
      writeBigInt(w, v);
      return;
    case "string":
      writeStr(w, v);
      return;
    case "object":
      break;
    default:
      throw new MsgpackError(`cannot encode a ${typeof v}`);
  }
  if (v === null) {
    w.u8(0xc0);
    return;
  }
  if (v instanceof Uint8Array) {
    writeBin(w, v);
    return;
  }
  if (v instanceof ArrayBuffer) {
    writeBin(w, new Uint8Array(v));
    return;
  }
  if (ArrayBuffer.isView(v)) {
    writeBin(w, new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
    return;
  }
  if (depth <= 0) throw new MsgpackError("value nested too deep");
  if (Array.isArray(v)) {
    writeContainerHeader(w, v.length, 0x90, 0xdc);
    for (const item of v) writeValue(w, item, depth - 1);
    return;
  }
  if (v instanceof Map) {
    writeContainerHeader(w, v.size, 0x80, 0xde);
    for (const [key, item] of v) {
      writeValue(w, key, depth - 1);
      writeValue(w, item, depth - 1);
    }
    return;
  }
  if (isPlainObject(v)) {
    // Keys whose value is undefined are left out, so optional fields can be
    // written as `{ref, session: maybeUndefined}`.
    const keys = Object.keys(v).filter((k) => v[k] !== undefined);
    writeContainerHeader(w, keys.length, 0x80, 0xde);
    for (const key of keys) {
      writeStr(w, key);
      writeValue(w, v[key], depth - 1);
    }
    return;
  }
  throw new MsgpackError(`cannot encode an object of type ${Object.prototype.toString.call(v)}`);
}

/**
 * Encode a value as MessagePack.
 *
 * null and undefined become nil; safe integers and bigints become ints (a
 * bigint outside int64..uint64 throws); other numbers become float64; strings
 * str; Uint8Array, other ArrayBuffer views and ArrayBuffer bin; arrays array;
 * Map and plain objects map (object keys whose value is undefined are omitted).
 * Anything else throws MsgpackError.
 *
 * @param {unknown} value
 * @param {EncodeOptions} [options]
 * @returns {Uint8Array}
 */
export function encode(value, options = {}) {
  const w = new Writer();
  writeValue(w, value, options.maxDepth ?? DEFAULT_MAX_DEPTH);
  return w.result();
}

class Reader {
  /**
   * @param {Uint8Array} bytes
   * @param {DecodeOptions} options
   */
  constructor(bytes, options) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.pos = 0;
    this.maxItems = options.maxItems ?? DEFAULT_MAX_ITEMS;
  }

  /** @param {number} n */
  need(n) {
    if (this.pos + n > this.bytes.length) throw new MsgpackError("truncated input");
  }

  u8() {
    this.need(1);
    return this.bytes[this.pos++];
  }

  u16() {
    this.need(2);
    const v = this.view.getUint16(this.pos);
    this.pos += 2;
    return v;
  }

  u32() {
    this.need(4);
    const v = this.view.getUint32(this.pos);
    this.pos += 4;
    return v;
  }

  /** @param {number} n */
  take(n) {
    this.need(n);
    const out = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  /** @param {number} n */
  str(n) {
    try {
      return UTF8_DECODER.decode(this.take(n));
    } catch (err) {
      if (err instanceof MsgpackError) throw err;
      throw new MsgpackError("invalid UTF-8 in str");
    }
  }

  /** @param {number} n */
  bin(n) {
    // A copy, so the result does not pin (or alias) the whole input buffer.
    return this.take(n).slice();
  }

  /** @param {number} n */
  count(n) {
    if (n > this.maxItems) throw new MsgpackError(`container of ${n} entries exceeds the limit`);
    // Each entry takes at least one byte: refuse lengths the input cannot hold
    // before allocating for them.
    if (n > this.bytes.length - this.pos) throw new MsgpackError("truncated input");
    return n;
  }

  /**
   * @param {number} n
   * @param {number} depth
   */
  array(n, depth) {
    if (depth <= 0) throw new MsgpackError("input nested too deep");
    this.count(n);
    const out = new Array(n);
    for (let i = 0; i < n; i++) out[i] = this.value(depth - 1);
    return out;
  }

  /**
   * Maps with only str keys become plain objects (with no prototype tricks: a
   * "__proto__" key is an own property); a map with any other key becomes a Map.
   * @param {number} n
   * @param {number} depth
   */
  map(n, depth) {
    if (depth <= 0) throw new MsgpackError("input nested too deep");
    this.count(n);
    /** @type {Record<string, unknown>} */
    const obj = {};
    for (let i = 0; i < n; i++) {
      const key = this.value(depth - 1);
      if (typeof key !== "string") return this.mapFrom(obj, key, n - i, depth);
      const item = this.value(depth - 1);
      Object.defineProperty(obj, key, { value: item, enumerable: true, writable: true, configurable: true });
    }
    return obj;
  }

  /**
   * Continue a map as a Map once a non-str key shows up.
   * @param {Record<string, unknown>} sofar
   * @param {unknown} firstKey
   * @param {number} left entries left, including firstKey's
   * @param {number} depth
   */
  mapFrom(sofar, firstKey, left, depth) {
    /** @type {Map<unknown, unknown>} */
    const out = new Map(Object.entries(sofar));
    out.set(firstKey, this.value(depth - 1));
    for (let i = 1; i < left; i++) {
      const key = this.value(depth - 1);
      out.set(key, this.value(depth - 1));
    }
    return out;
  }

  /**
   * @param {number} depth
   * @returns {unknown}
   */
  value(depth) {
    const b = this.u8();
    if (b < 0x80) return b;
    if (b >= 0xe0) return b - 0x100;
    if (b >= 0xa0 && b <= 0xbf) return this.str(b & 0x1f);
    if (b >= 0x90 && b <= 0x9f) return this.array(b & 0x0f, depth);
    if (b >= 0x80 && b <= 0x8f) return this.map(b & 0x0f, depth);
    switch (b) {
      case 0xc0:
        return null;
      case 0xc2:
        return false;
      case 0xc3:
        return true;
      case 0xc4:
        return this.bin(this.u8());
      case 0xc5:
        return this.bin(this.u16());
      case 0xc6:
        return this.bin(this.u32());
      case 0xca: {
        this.need(4);
        const v = this.view.getFloat32(this.pos);
        this.pos += 4;
        return v;
      }
      case 0xcb: {
        this.need(8);
        const v = this.view.getFloat64(this.pos);
        this.pos += 8;
        return v;
      }
      case 0xcc:
        return this.u8();
      case 0xcd:
        return this.u16();
      case 0xce:
        return this.u32();
      case 0xcf: {
        this.need(8);
        const v = this.view.getBigUint64(this.pos);
        this.pos += 8;
        return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
      }
      case 0xd0: {
        this.need(1);
        return this.view.getInt8(this.pos++);
      }
      case 0xd1: {
        this.need(2);
        const v = this.view.getInt16(this.pos);
        this.pos += 2;
        return v;
      }
      case 0xd2: {
        this.need(4);
        const v = this.view.getInt32(this.pos);
        this.pos += 4;
        return v;
      }
      case 0xd3: {
        this.need(8);
        const v = this.view.getBigInt64(this.pos);
        this.pos += 8;
        return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
      }
      case 0xd9:
        return this.str(this.u8());
      case 0xda:
        return this.str(this.u16());
      case 0xdb:
        return this.str(this.u32());
      case 0xdc:
        return this.array(this.u16(), depth);
      case 0xdd:
        return this.array(this.u32(), depth);
      case 0xde:
        return this.map(this.u16(), depth);
      case 0xdf:
        return this.map(this.u32(), depth);
      case 0xc7:
      case 0xc8:
      case 0xc9:
      case 0xd4:
      case 0xd5:
      case 0xd6:
      case 0xd7:
      case 0xd8:
        throw new MsgpackError("extension types are not supported");
      default:
        throw new MsgpackError(`invalid type byte 0x${b.toString(16)}`);
    }
  }
}

/**
 * Decode exactly one MessagePack value.
 *
 * Integers become numbers when they are safe integers and bigints otherwise;
 * bin becomes a Uint8Array (a copy); maps with only str keys become plain
 * objects, other maps a Map. Truncated input, trailing bytes, invalid UTF-8,
 * extension types, the reserved byte 0xc1 and nesting beyond `maxDepth` throw
 * MsgpackError.
 *
 * @param {Uint8Array | ArrayBuffer | ArrayBufferView} input
 * @param {DecodeOptions} [options]
 * @returns {unknown}
 */
export function decode(input, options = {}) {
  let bytes;
  if (input instanceof Uint8Array) bytes = input;
  else if (input instanceof ArrayBuffer) bytes = new Uint8Array(input);
  else if (ArrayBuffer.isView(input)) bytes = new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
  else throw new MsgpackError("decode needs bytes");
  const r = new Reader(bytes, options);
  const value = r.value(options.maxDepth ?? DEFAULT_MAX_DEPTH);
  if (r.pos !== bytes.length) throw new MsgpackError(`${bytes.length - r.pos} trailing bytes`);
  return value;
}
