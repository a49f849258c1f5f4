// A call in the system's headless Chromium (fake camera and microphone) against a
// real tether server with a real media worker.
//
// Usage: node call.spec.mjs <server url> <token> <room id> <other participant id> [min frames]
//
// The page (call.html) and the SDK's msgpack codec (tether/web/sdk/msgpack.js)
// are read from the checkout and served by a static server on 127.0.0.1 that
// this script runs; the page fetches nothing else and opens one WebSocket, to
// the tether server's /ws (a page fulfilled by a Playwright route would count as
// a public address, and Chromium's local-network-access checks would then block
// its loopback WebSocket). The page joins the call, publishes the fake camera
// with 3-layer simulcast (rids q/h/f) and the fake microphone, and answers the
// server's subscriber offers (the first and every renegotiation).
//
// Then, driven by the test: the spec waits until getStats() shows the other
// participant's video decoded (framesDecoded >= min frames) and its audio played,
// and prints "READY <stats json>"; then it reads instructions on stdin, one a
// line: "decode <participant id>" waits the same way for a participant who joined
// later (printing "DECODING <stats json>"), "finish" takes the final stats,
// prints "STATS <json>", leaves the call and prints "PASS". Every step prints
// "ok <step>"; the first failure prints "FAIL <reason>" and exits 1.
// tests/browser/test_call_browser.py runs it.
import { chromium } from "playwright-core";
import { readFile } from "node:fs/promises";
import { createServer } from "node:http";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const [url, token, roomId, otherParticipant, minFramesArg] = process.argv.slice(2);
if (!url || !token || !roomId || !otherParticipant) {
  console.error("usage: node call.spec.mjs <url> <token> <room id> <other participant id> [min frames]");
  process.exit(2);
}
const MIN_FRAMES = Number(minFramesArg ?? 60);
const STEP_MS = 20_000;
const DECODE_MS = 45_000;
const FINISH_MS = 60_000;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const PAGE = fileURLToPath(new URL("./call.html", import.meta.url));
const SDK_FILE = fileURLToPath(new URL("../../tether/web/sdk/msgpack.js", import.meta.url));
// Features we switch off on top of Playwright's: no mDNS host names instead of
// addresses (the worker would have to resolve them by multicast).
const OUR_DISABLED_FEATURES = ["WebRtcHideLocalIpsWithMdns"];
const ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--disable-domain-reliability", "--disable-client-side-phishing-detection",
  "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
  "--allow-loopback-in-peer-connection", "--autoplay-policy=no-user-gesture-required",
  // Needed to read the command line back (Browser.getBrowserCommandLine).
  "--enable-automation",
];

const wsUrl = url.replace(/^http/, "ws") + "/ws";

/** Serve call.html and /sdk/msgpack.js from the checkout on 127.0.0.1 (a free port). */
async function serveStatic() {
  const files = {
    "/call.html": [PAGE, "text/html; charset=utf-8"],
    "/sdk/msgpack.js": [SDK_FILE, "text/javascript; charset=utf-8"],
  };
  const server = createServer(async (req, res) => {
    const file = files[new URL(req.url, "http://127.0.0.1").pathname];
    try {
      if (!file) throw Object.assign(new Error("not found"), { status: 404 });
      const body = await readFile(file[0]);
      res.writeHead(200, { "content-type": file[1], "cache-control": "no-store" });
      res.end(body);
    } catch (err) {
      res.writeHead(err.status ?? 500, { "content-type": "text/plain; charset=utf-8" });
      res.end(String(err.message ?? err) + "\n");
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { server, origin: `http://127.0.0.1:${server.address().port}` };
}

const delay = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** The browser's own command line, as Chromium reports it. */
async function commandLine(browser) {
  const session = await browser.newBrowserCDPSession();
  const { arguments: args } = await session.send("Browser.getBrowserCommandLine");
  await session.detach();
  return args;
}

/**
 * Launch Chromium with exactly one --disable-features switch.
 *
 * Chromium honours only the last --disable-features switch, and Playwright adds
 * its own before ours: a probe launch reads Playwright's switch, the real launch
 * drops it (ignoreDefaultArgs) and passes one switch with its features and ours.
 */
async function launch() {
  const probe = await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
  const theirs = (await commandLine(probe)).filter((a) => a.startsWith("--disable-features="));
  await probe.close();
  const features = [...theirs.flatMap((a) => a.slice("--disable-features=".length).split(",")), ...OUR_DISABLED_FEATURES];
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    ignoreDefaultArgs: theirs,
    args: [...ARGS, "--disable-features=" + [...new Set(features.filter(Boolean))].join(",")],
  });
  const switches = (await commandLine(browser)).filter((a) => a.startsWith("--disable-features="));
  if (switches.length !== 1 || !OUR_DISABLED_FEATURES.every((f) => switches[0].split(/[=,]/).includes(f))) {
    await browser.close();
    throw new Error("could not merge --disable-features: " + JSON.stringify(switches));
  }
  return browser;
}

/** Chromium's inbound-rtp stats of one participant's video and audio. */
function from(stats, participant) {
  const ours = stats.inbound.filter((s) => s.track && s.track.startsWith(participant + "."));
  return {
    video: ours.filter((s) => s.kind === "video"),
    audio: ours.filter((s) => s.kind === "audio"),
  };
}

/** Its video decoded (MIN_FRAMES frames) and its audio played (a second of samples, not silence). */
function decoding(stats, participant) {
  const { video, audio } = from(stats, participant);
  return video.some((s) => (s.framesDecoded ?? 0) >= MIN_FRAMES && s.bytesReceived > 0)
    && audio.some((s) => (s.totalSamplesReceived ?? 0) > 48_000 && s.bytesReceived > 0 && s.totalAudioEnergy > 0);
}

const instructions = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

/** The next line from the test on stdin (null when stdin closed). */
async function instruction(ms) {
  let timer;
  try {
    const next = await Promise.race([
      instructions.next(),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no instruction on stdin within ${ms} ms`)), ms);
      }),
    ]);
    return next.done ? null : next.value.trim();
  } finally {
    clearTimeout(timer);
  }
}

/** Poll getStats() (real media over real sockets) until ``participant`` is decoded; returns the stats. */
async function untilDecoding(participant) {
  const deadline = Date.now() + DECODE_MS;
  let stats = await page.evaluate(() => window.tetherCall.stats());
  while (!decoding(stats, participant)) {
    if (Date.now() > deadline) {
      const info = await page.evaluate(() => ({ ...window.tetherCall.info(), log: window.tetherCall.log, errors: window.tetherCall.errors }));
      throw new Error(`${participant} not decoded within ${DECODE_MS} ms: ${JSON.stringify({ stats, info })}`);
    }
    await delay(250);
    stats = await page.evaluate(() => window.tetherCall.stats());
  }
  console.log(`ok decoding ${participant} ` + JSON.stringify(from(stats, participant)));
  return stats;
}

let failed = false;
let page = null;
let browser = null;
const statics = await serveStatic();
const pageOrigin = statics.origin;
try {
  browser = await launch();
  console.log("ok chromium " + browser.version() + ", one --disable-features switch");
  page = await browser.newPage();
  page.setDefaultTimeout(STEP_MS);
  const offsite = [];
  const pageErrors = [];
  page.on("request", (req) => { if (!req.url().startsWith(pageOrigin + "/")) offsite.push(req.url()); });
  page.on("websocket", (ws) => { if (ws.url() !== wsUrl) offsite.push(ws.url()); });
  page.on("pageerror", (err) => pageErrors.push(String(err)));
  page.on("console", (msg) => { if (msg.type() === "error") console.log("console error: " + msg.text()); });
  await page.goto(`${pageOrigin}/call.html?ws=${encodeURIComponent(wsUrl)}`);
  await page.waitForFunction(() => window.tetherCall !== undefined);
  console.log("ok page loaded from " + pageOrigin);

  const joined = await page.evaluate(([t, r]) => window.tetherCall.join(t, r, { simulcast: true }), [token, roomId]);
  console.log("ok joined and published " + JSON.stringify(joined));

  console.log("READY " + JSON.stringify(await untilDecoding(otherParticipant)));

  // The test's instructions: "decode <participant>" (a later joiner: wait until
  // its media is decoded too, print "DECODING <json>"), then "finish".
  for (;;) {
    const line = await instruction(FINISH_MS);
    if (line === null) throw new Error("stdin closed before finish");
    const [verb, argument] = line.split(" ");
    if (verb === "finish") break;
    if (verb !== "decode" || !/^[0-9a-f]{12}$/.test(argument ?? "")) throw new Error(`bad instruction: ${line}`);
    console.log("DECODING " + JSON.stringify(await untilDecoding(argument)));
  }
  const stats = await page.evaluate(() => window.tetherCall.stats());
  const info = await page.evaluate(() => ({ ...window.tetherCall.info(), log: window.tetherCall.log, errors: window.tetherCall.errors }));
  console.log("STATS " + JSON.stringify({ ...stats, info }));
  await page.evaluate(() => window.tetherCall.leave());
  console.log("ok left the call");
  if (info.errors.length) throw new Error("page errors: " + info.errors.join("; "));
  if (offsite.length) throw new Error("the page fetched other origins: " + offsite.join(", "));
  if (pageErrors.length) throw new Error("page errors: " + pageErrors.join("; "));
  console.log("PASS");
} catch (err) {
  failed = true;
  if (page) {
    const log = await page.evaluate(() => window.tetherCall?.log ?? []).catch(() => []);
    for (const line of log) console.log("page " + line);
  }
  console.log("FAIL " + (err && err.message ? err.message : err));
} finally {
  await browser?.close();
  statics.server.close();
}
process.exit(failed ? 1 : 0);
