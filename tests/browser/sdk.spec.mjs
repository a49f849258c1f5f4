// The JavaScript SDK in the system's headless Chromium, against a real server.
//
// Usage: node sdk.spec.mjs <server url> <alice token> <bob token> <admin token> <scenario>
// Scenarios: "worker" (ten tabs share one connection through a SharedWorker),
// "leader" (the fallback: three tabs elect a leader with Web Locks, which then
// closes), "election" (the same without Web Locks: heartbeat election),
// "leader-concurrent" and "election-concurrent" (the same, the tabs opened at once),
// "plain" (connect() in a page: the server drops the socket, then the network
// goes away; nothing is lost or repeated; a kick ends the client).
// Prints "ok <step>" lines as it goes, "PASS" at the end, or "FAIL <reason>"
// (tests/browser/test_js_sdk_browser.py runs it).
//
// The test page (sdk_page.html) must be a document of the server's own origin
// (the SharedWorker and the module imports are same-origin) and from the
// server's loopback address: a page fulfilled by a Playwright route counts as
// public, and Chromium's local-network-access checks then block its loopback
// WebSocket. The server has no test page, so each tab opens a path the server
// answers 404 to and the page is written into that document (page.setContent);
// everything the page loads, the SDK files included, comes from the server.
import { readFile } from "node:fs/promises";
import { chromium } from "playwright-core";

const [url, aliceToken, bobToken, adminToken, scenario] = process.argv.slice(2);
if (!url || !aliceToken || !bobToken || !adminToken || !scenario) {
  console.error("usage: node sdk.spec.mjs <url> <alice token> <bob token> <admin token> <worker|leader|election|plain|leader-concurrent|election-concurrent>");
  process.exit(2);
}

const STEP_MS = 15_000;
const PAGE_URL = `${url}/__tether_sdk_test__`;
const PAGE_HTML = await readFile(new URL("./sdk_page.html", import.meta.url), "utf8");

/** @param {boolean} condition @param {string} message */
function check(condition, message) {
  if (!condition) throw new Error(message);
}

/**
 * Poll `predicate` (real I/O elsewhere: the browser, the server) until it is
 * truthy or `ms` pass.
 * @template T @param {() => Promise<T> | T} predicate @param {string} what @param {number} [ms]
 */
async function until(predicate, what, ms = STEP_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** The admin API (loopback, admin token). @param {string} method @param {string} path @param {any} [body] */
async function admin(method, path, body) {
  const response = await fetch(url + path, {
    method,
    headers: { authorization: `Bearer ${adminToken}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${JSON.stringify(data)}`);
  return data;
}

/** The server's open WebSocket connections of `user`: [{urn, conn_id, device, session, state}]. */
async function connectionsOf(user) {
  const { actors } = await admin("GET", "/admin/api/actors?kind=connection&limit=1000");
  const found = [];
  for (const row of actors) {
    let detail;
    try {
      ({ detail } = await admin("GET", `/admin/api/actors/${encodeURIComponent(row.urn)}`));
    } catch {
      continue; // it stopped between the two requests
    }
    if (detail.user === user && detail.state !== "closed") found.push({ urn: row.urn, ...detail });
  }
  return found;
}

/** Exactly `n` connections of `user`, now and still a moment later (none being replaced). */
async function expectConnections(user, n, what) {
  try {
    await until(async () => (await connectionsOf(user)).length === n, `${what}: ${n} connection(s) of ${user}`);
  } catch (err) {
    throw new Error(`${err.message}; the server has ${JSON.stringify(await connectionsOf(user))}`);
  }
  // Not a synchronization: a second look, so that a count reached while
  // another connection was still on its way (a second leader, a worker's
  // reconnect) is caught at least when it lands within this moment.
  await new Promise((resolve) => setTimeout(resolve, 300));
  const now = await connectionsOf(user);
  check(now.length === n, `${what}: ${user} has ${now.length} connections, expected ${n}: ${JSON.stringify(now)}`);
  return now;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const offsite = [];
const pageErrors = [];
/** @type {Map<string, number>} SDK file → HTTP status as the browser fetched it */
const sdkFetched = new Map();

/** A browser context (one "browser profile") whose test page is ours. */
async function newProfile() {
  const context = await browser.newContext();
  context.on("request", (req) => {
    if (!req.url().startsWith(url)) offsite.push(req.url());
  });
  context.on("response", (res) => {
    const path = res.url().slice(url.length);
    if (path.startsWith("/sdk/")) sdkFetched.set(path, res.status());
  });
  return context;
}

/** A tab of `context` with the test page loaded. */
async function newTab(context, name) {
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.on("pageerror", (err) => pageErrors.push(`${name}: ${err}`));
  const response = await page.goto(PAGE_URL);
  check(response?.status() === 404, `${PAGE_URL} is a page of the server: ${response?.status()}`);
  await page.setContent(PAGE_HTML);
  await page.waitForFunction(() => document.getElementById("state")?.textContent === "ready");
  return page;
}

/** Open a client in `page`; resolves with {role, user, session}. */
function open(page, kind, token, options = {}) {
  return page.evaluate(([k, t, o]) => window.sdk.open(k, t, o), [kind, token, options]);
}

/** The events of `type` in `room` a page recorded. */
function events(page, type, room) {
  return page.evaluate(([t, r]) => window.sdk.of(t, r), [type, room]);
}

/** Seqs of `type` events in `room` from `sender` (all senders when omitted). */
async function seqs(page, type, room, sender) {
  const list = await events(page, type, room);
  return list.filter((m) => sender === undefined || m.sender === sender).map((m) => m.seq);
}

/** `got` is exactly `expected` (in this order: ascending, no repeats). */
function sameSeqs(got, expected, what) {
  check(
    got.length === expected.length && got.every((s, i) => s === expected[i]),
    `${what}: got seqs [${got}], expected [${expected}]`,
  );
}

/** Start sending `count` messages from `page` every `gapMs`; results gather in window.sends. */
function startSending(page, room, label, count, gapMs) {
  return page.evaluate(
    ([r, l, n, gap]) => {
      window.sends = [];
      window.sending = (async () => {
        for (let i = 0; i < n; i++) {
          const result = await window.sdk.client.send(r, { text: `${l} ${i}` });
          window.sends.push(result);
          await new Promise((resolve) => setTimeout(resolve, gap));
        }
        return window.sends;
      })();
    },
    [room, label, count, gapMs],
  );
}
const sent = (page) => page.evaluate(() => window.sends.length);
const finishSending = (page) => page.evaluate(() => window.sending);

// -- scenarios -------------------------------------------------------------------------

async function workerScenario() {
  const bobProfile = await newProfile();
  const bob = await newTab(bobProfile, "bob");
  await open(bob, "plain", bobToken, { device: "bob-browser" });
  const aliceProfile = await newProfile();
  const tabs = [];
  for (let i = 0; i < 10; i++) tabs.push(await newTab(aliceProfile, `alice tab ${i}`));
  // All at once, as a browser restoring its tabs does; the default mode
  // ("auto") picks the SharedWorker where the browser has one.
  const infos = await Promise.all(tabs.map((tab) => open(tab, "shared", aliceToken)));
  for (const [i, info] of infos.entries()) {
    check(info.role === "worker" && info.user === "alice", `tab ${i} opened as ${JSON.stringify(info)}`);
  }
  console.log("ok ten tabs opened at once through the SharedWorker");
  const conns = await expectConnections("alice", 1, "ten tabs");
  console.log(`ok the server sees one connection for ten tabs (device ${conns[0].device})`);

  const room = await tabs[0].evaluate(() => window.sdk.client.createRoom("tabs", { members: ["bob"] }));
  const states = await bob.evaluate(() => window.sdk.client.subscribePresence(["alice"]));
  check(states.length === 1 && states[0].status === "online" && states[0].devices === 1,
    `bob sees alice as ${JSON.stringify(states)}, expected online on 1 device`);
  console.log("ok bob sees alice online on one device");

  const mine = await tabs[3].evaluate((r) => window.sdk.client.send(r, { text: "from tab 3" }), room.id);
  for (const [i, tab] of tabs.entries()) {
    await until(async () => (await seqs(tab, "sent", room.id)).includes(mine.seq), `tab ${i} showing tab 3's message`);
    sameSeqs(await seqs(tab, "sent", room.id), [mine.seq], `tab ${i} sent events`);
  }
  await until(async () => (await seqs(bob, "msg", room.id)).length === 1, "bob getting tab 3's message");
  sameSeqs(await seqs(bob, "msg", room.id), [mine.seq], "bob's messages");
  console.log("ok a message sent in tab 3 shows in all ten tabs, and once at bob");

  const reply = await bob.evaluate((r) => window.sdk.client.send(r, { text: "hi all tabs" }), room.id);
  for (const [i, tab] of tabs.entries()) {
    await until(async () => (await seqs(tab, "msg", room.id)).length === 1, `tab ${i} getting bob's message`);
    sameSeqs(await seqs(tab, "msg", room.id), [reply.seq], `tab ${i} messages`);
  }
  console.log("ok bob's message reaches each of the ten tabs once");

  // Idle is a vote per tab: the browser is away only when every tab is idle.
  for (const tab of tabs.slice(0, 9)) await tab.evaluate(() => window.sdk.client.setIdle(true));
  const [partly] = await bob.evaluate(() => window.sdk.client.subscribePresence(["alice"]));
  check(partly.status === "online", `nine of ten tabs idle: alice is ${JSON.stringify(partly)}`);
  await tabs[9].evaluate(() => window.sdk.client.setIdle(true));
  await until(async () => (await events(bob, "presence")).some((p) => p.user === "alice" && p.status === "away"), "bob seeing alice away");
  await tabs[4].evaluate(() => window.sdk.client.setIdle(false));
  await until(async () => (await events(bob, "presence")).at(-1)?.status === "online", "bob seeing alice back");
  await tabs[4].evaluate(() => window.sdk.client.setIdle(true));
  await until(async () => (await events(bob, "presence")).at(-1)?.status === "away", "bob seeing alice away again");
  console.log("ok alice is away only when all ten tabs are idle, and back when one is active");

  // The worker's connection drops (the server stops it: 3003) while bob sends:
  // every tab still gets every message once.
  const [live] = await expectConnections("alice", 1, "before the drop");
  await startSending(bob, room.id, "bob", 20, 30);
  await until(async () => (await sent(bob)) >= 5, "bob sending");
  await admin("POST", `/admin/api/actors/${encodeURIComponent(live.urn)}/stop`, {});
  const bobSends = await finishSending(bob);
  const [resumed] = await expectConnections("alice", 1, "after the drop");
  check(resumed.urn !== live.urn && resumed.session === live.session && resumed.resumed,
    `the worker's new connection ${JSON.stringify(resumed)} does not resume ${JSON.stringify(live)}`);
  const expected = [reply.seq, ...bobSends.map((m) => m.seq)];
  for (const [i, tab] of tabs.entries()) {
    await until(async () => (await seqs(tab, "msg", room.id)).length >= expected.length, `tab ${i} getting bob's messages`);
    sameSeqs(await seqs(tab, "msg", room.id), expected, `tab ${i} after the drop`);
    const [reconnecting, reconnected] = [await events(tab, "reconnecting"), await events(tab, "reconnected")];
    check(reconnecting.length === 1 && reconnected.length === 1 && reconnected[0].resumed,
      `tab ${i}: reconnecting ${JSON.stringify(reconnecting)}, reconnected ${JSON.stringify(reconnected)}`);
  }
  const afterDrop = (await events(bob, "presence")).filter((p) => p.user === "alice").at(-1);
  check(afterDrop.status === "away", `alice after the drop, at bob: ${JSON.stringify(afterDrop)}`);
  console.log("ok the server dropped the worker's connection: resumed, every tab has every message once, still away");
  await tabs[4].evaluate(() => window.sdk.client.setIdle(false));
  await until(async () => (await events(bob, "presence")).at(-1)?.status === "online", "bob seeing alice active");

  // Tab 4 is the only active one: closing the others changes nothing, closing
  // it takes its vote away (the last tab is idle: away).
  const presenceAt = (await events(bob, "presence")).length;
  for (const [i, tab] of tabs.entries()) if (i !== 4 && i !== 9) await tab.close();
  await expectConnections("alice", 1, "two tabs left");
  const later = await bob.evaluate((r) => window.sdk.client.send(r, { text: "still there?" }), room.id);
  for (const i of [4, 9]) {
    await until(async () => (await seqs(tabs[i], "msg", room.id)).length === expected.length + 1, `tab ${i} getting a message`);
    sameSeqs(await seqs(tabs[i], "msg", room.id), [...expected, later.seq], `tab ${i}: messages`);
  }
  const flaps = (await events(bob, "presence")).slice(presenceAt).filter((p) => p.user === "alice");
  check(flaps.length === 0, `closing eight of ten tabs changed alice's presence: ${JSON.stringify(flaps)}`);
  console.log("ok eight tabs closed: still one connection, no presence change, the other tabs still served");
  await tabs[4].close();
  await until(async () => (await events(bob, "presence")).at(-1)?.status === "away",
    "bob seeing alice away once the only active tab closed");
  await expectConnections("alice", 1, "one tab left");
  console.log("ok the only active tab closed: alice is away (the last tab is idle)");

  const closedAt = Date.now();
  await tabs[9].close();
  await expectConnections("alice", 0, "all tabs closed");
  const offline = await until(
    async () => (await events(bob, "presence")).find((p) => p.user === "alice" && p.status === "offline"),
    "bob seeing alice offline",
  );
  const updates = (await events(bob, "presence")).filter((p) => p.user === "alice" && p.status === "offline");
  check(updates.length === 1 && offline.devices === 0 && offline.lastSeen !== null,
    `alice's presence updates at bob: ${JSON.stringify(updates)}`);
  console.log(`ok last tab closed: alice offline at bob after ${Date.now() - closedAt} ms`);
}

/**
 * @param {boolean} locks elect with Web Locks (true) or by heartbeats (false)
 * @param {boolean} concurrent open the three tabs at once (else one after the other)
 */
async function leaderScenario(locks, concurrent) {
  const how = locks ? { mode: "leader" } : { mode: "leader", locks: null };
  const bobProfile = await newProfile();
  const bob = await newTab(bobProfile, "bob");
  await open(bob, "plain", bobToken, { device: "bob-browser" });
  const aliceProfile = await newProfile();
  const tabs = [];
  for (let i = 0; i < 3; i++) tabs.push(await newTab(aliceProfile, `alice tab ${i}`));
  if (concurrent) {
    // All at once, as a browser restoring its tabs does.
    await Promise.all(tabs.map((tab) => open(tab, "shared", aliceToken, how)));
  } else {
    for (const tab of tabs) await open(tab, "shared", aliceToken, how);
  }
  // A tab's role is settled once it was answered; an election may still
  // resolve a split (without locks) just after, so read the roles when the
  // server shows one connection.
  await expectConnections("alice", 1, "three tabs");
  const roles = await Promise.all(tabs.map((t) => t.evaluate(() => window.sdk.client.role)));
  check(roles.filter((r) => r === "leader").length === 1 && roles.filter((r) => r === "follower").length === 2,
    `roles of the three tabs: ${roles}`);
  console.log(`ok three tabs elected one leader (${roles}) and hold one connection`);

  const leaderAt = roles.indexOf("leader");
  const followers = tabs.filter((_t, i) => i !== leaderAt);
  // A follower's call travels through the leader.
  const room = await followers[0].evaluate(() => window.sdk.client.createRoom("leader", { members: ["bob"] }));
  const before = [];
  for (let i = 0; i < 5; i++) before.push((await bob.evaluate((r) => window.sdk.client.send(r, { text: "before" }), room.id)).seq);
  for (const [i, tab] of tabs.entries()) {
    await until(async () => (await seqs(tab, "msg", room.id)).length === before.length, `tab ${i} getting bob's first messages`);
    sameSeqs(await seqs(tab, "msg", room.id), before, `tab ${i} first messages`);
  }
  console.log("ok every tab gets bob's messages once");

  const [online] = await bob.evaluate(() => window.sdk.client.subscribePresence(["alice"]));
  check(online.status === "online" && online.devices === 1, `bob sees alice as ${JSON.stringify(online)}`);
  for (const tab of tabs) await tab.evaluate(() => window.sdk.client.setIdle(true));
  await until(async () => (await events(bob, "presence")).at(-1)?.status === "away", "bob seeing alice away");
  const presenceAt = (await events(bob, "presence")).length;
  console.log("ok bob sees alice on one device, away once all three tabs are idle");
  const [old] = await expectConnections("alice", 1, "before the hand-over");

  // Bob keeps sending, and a follower too, while the leader tab closes.
  await startSending(bob, room.id, "bob", 40, 40);
  await startSending(followers[1], room.id, "follower", 8, 120);
  await until(async () => (await sent(bob)) >= 5, "bob sending");
  await tabs[leaderAt].close();
  console.log("ok the leader tab closed while messages flow");
  const bobSends = await finishSending(bob);
  const tabSends = await finishSending(followers[1]);
  const newRoles = await Promise.all(followers.map((t) => t.evaluate(() => window.sdk.client.role)));
  check(newRoles.filter((r) => r === "leader").length === 1, `roles after the leader left: ${newRoles}`);
  const [taken] = await expectConnections("alice", 1, "after the hand-over");
  check(taken.urn !== old.urn && taken.session === old.session && taken.resumed && taken.device === old.device,
    `the new leader's connection ${JSON.stringify(taken)} does not resume ${JSON.stringify(old)}`);
  console.log(`ok a remaining tab took over (${newRoles}); one connection, resuming session ${taken.session}`);

  const expected = [...before, ...bobSends.map((s) => s.seq)];
  for (const [i, tab] of followers.entries()) {
    await until(async () => (await seqs(tab, "msg", room.id, "bob")).length >= expected.length,
      `remaining tab ${i} getting all of bob's messages`);
    sameSeqs(await seqs(tab, "msg", room.id, "bob"), expected, `remaining tab ${i}: bob's messages`);
  }
  console.log(`ok both remaining tabs got all ${expected.length} of bob's messages once, in order`);

  const tabSeqs = tabSends.map((s) => s.seq);
  check(new Set(tabSeqs).size === tabSeqs.length, `the follower's sends stored twice: ${JSON.stringify(tabSends)}`);
  await until(async () => (await seqs(bob, "msg", room.id)).length >= tabSeqs.length, "bob getting the follower's messages");
  const atBob = await events(bob, "msg", room.id);
  sameSeqs(atBob.map((m) => m.seq), [...tabSeqs].sort((a, b) => a - b),
    `bob: the follower's messages (${JSON.stringify(atBob.map((m) => [m.seq, m.cid, m.body.text]))})`);
  for (const [i, tab] of followers.entries()) {
    const shown = (await seqs(tab, "sent", room.id)).filter((s) => tabSeqs.includes(s));
    sameSeqs([...new Set(shown)].sort((a, b) => a - b), [...tabSeqs].sort((a, b) => a - b), `remaining tab ${i}: the follower's sends`);
    check(shown.length === new Set(shown).size, `remaining tab ${i} showed a send twice: [${shown}]`);
  }
  console.log(`ok the ${tabSeqs.length} messages sent from a follower across the hand-over are stored and shown once`);

  // Presence across the hand-over: the same device, never offline, and still
  // away (both remaining tabs are idle).
  const during = (await events(bob, "presence")).slice(presenceAt).filter((p) => p.user === "alice");
  check(during.every((p) => p.status !== "offline" && p.devices === 1), `alice during the hand-over: ${JSON.stringify(during)}`);
  // The tabs vote again on the new host right after the hand-over.
  try {
    await until(async () => (await bob.evaluate(() => window.sdk.client.subscribePresence(["alice"])))[0].status === "away",
      "alice away again", 5000);
  } catch {
    const [now] = await bob.evaluate(() => window.sdk.client.subscribePresence(["alice"]));
    throw new Error(`after the hand-over, with both remaining tabs idle, bob sees alice ${JSON.stringify(now)}`);
  }
  console.log("ok presence across the hand-over: one device, never offline, still away");

  // bye() in one tab signs the browser out: every tab is closed, and the user
  // is offline at once (well within the grace period).
  const byeAt = Date.now();
  await followers[0].evaluate(() => window.sdk.client.bye());
  for (const [i, tab] of followers.entries()) {
    const closed = await until(async () => (await events(tab, "closed"))[0], `remaining tab ${i} closed by bye`);
    check(closed.code === 1000, `remaining tab ${i} closed with ${JSON.stringify(closed)}`);
  }
  await expectConnections("alice", 0, "after bye");
  await until(async () => (await events(bob, "presence")).at(-1)?.status === "offline", "bob seeing alice offline after bye", 5000);
  console.log(`ok bye() in one tab closed both tabs; alice offline at bob after ${Date.now() - byeAt} ms`);
}

async function plainScenario() {
  const bobProfile = await newProfile();
  const bob = await newTab(bobProfile, "bob");
  await open(bob, "plain", bobToken, { device: "bob-browser" });
  const aliceProfile = await newProfile();
  const alice = await newTab(aliceProfile, "alice");
  // A longer backoff than the other scenarios: messages pile up while alice is away.
  const info = await open(alice, "plain", aliceToken, { device: "alice-browser", backoffBaseMs: 400, backoffCapMs: 1000 });
  check(info.role === "plain" && info.user === "alice", `alice opened as ${JSON.stringify(info)}`);
  const room = await alice.evaluate(() => window.sdk.client.createRoom("plain", { members: ["bob"] }));
  const before = (await bob.evaluate((r) => window.sdk.client.send(r, { text: "before" }), room.id)).seq;
  await until(async () => (await seqs(alice, "msg", room.id)).length === 1, "alice getting bob's first message");
  await bob.evaluate(() => window.sdk.client.subscribePresence(["alice"]));
  const [first] = await expectConnections("alice", 1, "alice connected");
  console.log("ok alice and bob chat with connect()");

  await startSending(bob, room.id, "bob", 30, 30);
  await startSending(alice, room.id, "alice", 10, 60);
  await until(async () => (await sent(bob)) >= 5, "bob sending");
  // Stopping the connection's actor closes the socket with 3003 (internal error): reconnect.
  await admin("POST", `/admin/api/actors/${encodeURIComponent(first.urn)}/stop`, {});
  const bobSends = await finishSending(bob);
  const aliceSends = await finishSending(alice);
  const reconnecting = await events(alice, "reconnecting");
  check(reconnecting.length >= 1 && reconnecting[0].code === 3003, `alice's reconnecting events: ${JSON.stringify(reconnecting)}`);
  const reconnected = await until(async () => (await events(alice, "reconnected"))[0], "alice reconnecting");
  check(reconnected.resumed === true, `alice reconnected without resuming: ${JSON.stringify(reconnected)}`);
  const [second] = await expectConnections("alice", 1, "after the drop");
  check(second.urn !== first.urn && second.session === first.session && second.resumed,
    `the new connection ${JSON.stringify(second)} does not resume ${JSON.stringify(first)}`);
  console.log(`ok the server dropped alice (3003); she reconnected and resumed session ${second.session}`);

  const expected = [before, ...bobSends.map((s) => s.seq)];
  await until(async () => (await seqs(alice, "msg", room.id)).length >= expected.length, "alice getting all of bob's messages");
  sameSeqs(await seqs(alice, "msg", room.id), expected, "alice: bob's messages");
  const aliceSeqs = aliceSends.map((s) => s.seq);
  check(new Set(aliceSeqs).size === aliceSeqs.length, `alice's sends: ${JSON.stringify(aliceSends)}`);
  await until(async () => (await seqs(bob, "msg", room.id)).length >= aliceSeqs.length, "bob getting alice's messages");
  sameSeqs(await seqs(bob, "msg", room.id), aliceSeqs, "bob: alice's messages");
  const recovered = await events(alice, "recovered", room.id);
  check(recovered.length >= 1 && recovered.every((r) => r.complete), `recovered: ${JSON.stringify(recovered)}`);
  console.log(`ok nothing lost or repeated: alice has bob's ${expected.length} messages, bob alice's ${aliceSeqs.length}`);

  // The network goes away (no close frame, nothing arrives): the client notices
  // the server's silence, retries until the network is back, then resumes.
  const retriesBefore = (await events(alice, "reconnecting")).length;
  await startSending(bob, room.id, "bob while alice is cut off", 15, 50);
  await startSending(alice, room.id, "alice while cut off", 5, 100);
  await until(async () => (await sent(bob)) >= 3, "bob sending");
  await aliceProfile.setOffline(true);
  const cut = await until(async () => (await events(alice, "reconnecting"))[retriesBefore], "alice noticing the cut");
  check(cut.code === 1006, `alice noticed the cut as ${JSON.stringify(cut)}`);
  const bobLater = await finishSending(bob);
  await aliceProfile.setOffline(false);
  const aliceLater = await finishSending(alice);
  const back = await until(async () => (await events(alice, "reconnected"))[1], "alice back after the cut");
  check(back.resumed === true, `alice came back without resuming: ${JSON.stringify(back)}`);
  const [third] = await expectConnections("alice", 1, "after the cut");
  check(third.session === first.session && third.resumed, `after the cut: ${JSON.stringify(third)}`);
  const allFromBob = [...expected, ...bobLater.map((m) => m.seq)];
  await until(async () => (await seqs(alice, "msg", room.id)).length >= allFromBob.length, "alice getting bob's messages");
  sameSeqs(await seqs(alice, "msg", room.id), allFromBob, "alice: bob's messages after the cut");
  const allFromAlice = [...aliceSeqs, ...aliceLater.map((m) => m.seq)];
  check(new Set(allFromAlice).size === allFromAlice.length, `alice's sends: ${JSON.stringify(aliceLater)}`);
  await until(async () => (await seqs(bob, "msg", room.id)).length >= allFromAlice.length, "bob getting alice's messages");
  sameSeqs(await seqs(bob, "msg", room.id), allFromAlice, "bob: alice's messages after the cut");
  const seenByBob = (await events(bob, "presence")).filter((p) => p.user === "alice" && p.status === "offline");
  check(seenByBob.length === 0, `alice showed offline at bob within the grace: ${JSON.stringify(seenByBob)}`);
  console.log(`ok network cut (${cut.reason || "no reason"}): resumed, nothing lost or repeated, never offline at bob`);

  // A kick (3504) is not a reason to reconnect: the client closes for good.
  await admin("POST", `/admin/api/connections/${third.conn_id}/disconnect`, { reason: "test kick" });
  const closed = await until(async () => (await events(alice, "closed"))[0], "alice's client closing");
  check(closed.code === 3504, `closed with ${JSON.stringify(closed)}`);
  await expectConnections("alice", 0, "after the kick");
  console.log("ok a kick (3504) closes the client for good");
}

// -- run ---------------------------------------------------------------------------------

const scenarios = {
  worker: workerScenario,
  leader: () => leaderScenario(true, false),
  election: () => leaderScenario(false, false),
  // Not run by test_js_sdk_browser.py yet: they fail now and then until the
  // fixes in notes/H7_SDK_BUGS.md (part 2) are in shared.js.
  "leader-concurrent": () => leaderScenario(true, true),
  "election-concurrent": () => leaderScenario(false, true),
  plain: plainScenario,
};
let failed = false;
try {
  const run = scenarios[scenario];
  check(run !== undefined, `unknown scenario ${scenario}`);
  await run();
  for (const file of ["/sdk/client.js", "/sdk/shared.js", "/sdk/msgpack.js"]) {
    check(sdkFetched.get(file) === 200, `${file} was not served to the page: ${JSON.stringify([...sdkFetched])}`);
  }
  if (offsite.length) throw new Error("the pages fetched other origins: " + offsite.join(", "));
  if (pageErrors.length) throw new Error("page errors: " + pageErrors.join("; "));
  console.log("PASS");
} catch (err) {
  failed = true;
  console.log("FAIL " + (err && err.stack ? err.stack : err));
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
