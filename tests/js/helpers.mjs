// Shared helpers of the JavaScript SDK tests (not a test file itself).
import net from "node:net";

import { connect } from "../../tether/web/sdk/client.js";

/** The server under test, from tests/js/test_js_sdk.py. */
export function serverEnv() {
  const url = process.env.TETHER_URL;
  const tokens = process.env.TETHER_TOKENS;
  if (!url || !tokens) throw new Error("TETHER_URL and TETHER_TOKENS are set by tests/js/test_js_sdk.py");
  return { url, tokens: JSON.parse(tokens) };
}

/**
 * Wait until `predicate()` is truthy, polling real I/O with a deadline.
 * @param {() => any} predicate
 * @param {string} what
 * @param {number} [timeoutMs]
 */
export async function until(predicate, what, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/**
 * Record every event of a client, by type, for assertions.
 * @param {import("../../tether/web/sdk/client.js").TetherClient} client
 * @param {string[]} types
 */
export function record(client, types) {
  /** @type {Record<string, any[]>} */
  const seen = {};
  for (const type of types) {
    seen[type] = [];
    client.on(type, (detail) => seen[type].push(detail));
  }
  return seen;
}

/**
 * Open a client for `user` (device `device`), optionally through a proxy URL.
 * @param {string} user
 * @param {Record<string, any>} [options]
 */
export async function open(user, options = {}) {
  const { url, tokens } = serverEnv();
  return connect(options.url ?? url, { token: tokens[user], device: `${user}-dev`, backoffBaseMs: 50, backoffCapMs: 500, ...options });
}

/**
 * A TCP proxy in front of the server whose connections the test can stall
 * (stop forwarding server → client) and cut (as a network failure: no close frame).
 * @param {string} target the server's ws:// URL
 */
export async function startProxy(target) {
  const { hostname, port, pathname } = new URL(target);
  /** @type {Set<{client: net.Socket, upstream: net.Socket}>} */
  const pairs = new Set();
  let stalled = false;
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(port), hostname);
    const pair = { client, upstream };
    pairs.add(pair);
    if (stalled) upstream.pause();
    client.on("data", (chunk) => upstream.write(chunk));
    upstream.on("data", (chunk) => client.write(chunk));
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("close", end);
    upstream.on("close", end);
    client.on("error", end);
    upstream.on("error", end);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(undefined)));
  const address = /** @type {net.AddressInfo} */ (server.address());
  return {
    url: `ws://127.0.0.1:${address.port}${pathname}`,
    get connections() {
      return pairs.size;
    },
    /** Stop (true) or resume (false) forwarding what the server sends. @param {boolean} on */
    stall(on) {
      stalled = on;
      for (const { upstream } of pairs) on ? upstream.pause() : upstream.resume();
    },
    /** Drop every connection abruptly. */
    cut() {
      for (const { client, upstream } of pairs) {
        client.resetAndDestroy();
        upstream.destroy();
      }
      pairs.clear();
      stalled = false;
    },
    close() {
      this.cut();
      return new Promise((resolve) => server.close(() => resolve(undefined)));
    },
  };
}
