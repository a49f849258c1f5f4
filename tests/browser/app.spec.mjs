// Drives the web app (GET /) in the system's headless Chromium: two users in two
// browser contexts.
//
// Usage: node app.spec.mjs <chat|call> <server url> <alice token> <room id> [screenshot dir]
//
// chat: alice signs in with a token, bob with a name (the server runs --dev);
//   unread badge, history paging, typing, delivered/read receipts, presence
//   (bob's page closes: offline with last seen; it comes back: online, and the
//   messages sent meanwhile are there), a dropped connection (banner, nothing
//   lost, nothing twice). The connection drop is made by the Python side: this
//   script prints "DROP" and waits for a line on stdin once it is done.
// call: both join the room's call; each decodes the other's video (getStats
//   framesDecoded grows), mute shows on the other side; the connections drop
//   (as in chat) and the call carries on.
//
// Prints "ok <step>" lines as it goes, "FAIL <reason>" on the first failure,
// and "PASS" at the end (tests/browser/test_web_app.py runs it).
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const [mode, url, aliceToken, roomId, shots] = process.argv.slice(2);
if (!["chat", "call"].includes(mode) || !url || !aliceToken || !roomId) {
  console.error("usage: node app.spec.mjs <chat|call> <url> <alice token> <room id> [screenshot dir]");
  process.exit(2);
}

const STEP_MS = 15_000;
const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
    // Background pages keep their timers and media running (two pages share the CPU).
    "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
  ],
});

const offsite = [];
const pageErrors = [];

/** A page of the app in `context` (a context has its own storage: one user). */
async function openUser(context) {
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.on("request", (req) => { if (!req.url().startsWith(url)) offsite.push(req.url()); });
  page.on("pageerror", (err) => pageErrors.push(String(err)));
  page.on("dialog", (dialog) => dialog.accept());
  const response = await page.goto(url + "/");
  const type = response ? response.headers()["content-type"] ?? "" : "";
  if (!response || response.status() !== 200 || !type.startsWith("text/html")) {
    throw new Error(`GET / is not the web app (${response?.status()} ${type}): is tether.web.static_response routed in tether/app.py?`);
  }
  return page;
}

async function signInToken(page, token) {
  await page.locator("#signin-token").waitFor({ state: "visible" });
  await page.fill("#signin-token", token);
  await page.click("#signin-submit");
  await page.locator("#app").waitFor({ state: "visible" });
}

async function signInName(page, name) {
  await page.locator("#signin-form").waitFor({ state: "visible" });
  await page.check("input[name=method][value=name]");
  await page.fill("#signin-name", name);
  await page.click("#signin-submit");
  await page.locator("#app").waitFor({ state: "visible" });
}

const roomButton = (page) => page.locator(`#rooms button[data-room="${roomId}"]`);
const messageByText = (page, text) => page.locator("#messages li.message", { hasText: text });

async function openRoom(page) {
  await roomButton(page).click();
  await page.locator("#room-title").filter({ hasText: /\S/ }).waitFor();
  await page.locator("#messages li.message").first().waitFor();
}

async function send(page, text) {
  await page.fill("#message-input", text);
  await page.press("#message-input", "Enter");
  await messageByText(page, text).waitFor();
}

async function expectCount(page, text, n) {
  const count = await messageByText(page, text).count();
  if (count !== n) throw new Error(`"${text}" shown ${count} times, expected ${n}`);
}

async function poll(what, fn, ms = STEP_MS) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    last = await fn();
    if (last) return last;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out: ${what} (last: ${JSON.stringify(last)})`);
}

/** Record whether the reconnecting banner shows at all (it may show only briefly). */
async function watchBanner(page) {
  await page.evaluate(() => {
    window.__bannerSeen = false;
    const el = document.getElementById("banner");
    new MutationObserver(() => { if (!el.hidden && /Reconnecting/.test(el.textContent)) window.__bannerSeen = true; })
      .observe(el, { attributes: true, childList: true, characterData: true, subtree: true });
  });
}

/** Wait for the Python side's answer to "DROP". */
async function dropped() {
  const answer = await stdinLines.next();
  if (answer.done || answer.value.trim() !== "dropped") throw new Error("the test did not drop the connections");
}

async function chat() {
  const aliceCtx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const bobCtx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const alice = await openUser(aliceCtx);
  let bob = await openUser(bobCtx);

  await alice.fill("#signin-token", "not-a-token");
  await alice.click("#signin-submit");
  await alice.locator("#signin-error").filter({ hasText: /refused/ }).waitFor();
  console.log("ok a bad token is refused");

  await signInToken(alice, aliceToken);
  await signInName(bob, "bob");
  console.log("ok alice signed in with a token, bob with a name");

  // The room holds 60 messages, alice's and bob's in turn: 30 are unread for alice.
  await roomButton(alice).locator(".unread", { hasText: "30" }).waitFor();
  console.log("ok alice's room list shows 30 unread");

  await openRoom(alice);
  await alice.locator('#messages li[data-seq="60"]').waitFor();
  if (await alice.locator('#messages li[data-seq="1"]').count()) throw new Error("the first page held everything");
  // Scroll up until the first message is there (pages load as the top is reached).
  await poll("history paged back to seq 1", async () => {
    await alice.evaluate(() => { document.getElementById("timeline").scrollTop = 0; });
    return (await alice.locator('#messages li[data-seq="1"]').count()) > 0;
  });
  await alice.locator("#history-start").waitFor({ state: "visible" });
  const seqs = await alice.$$eval("#messages li[data-seq]", (els) => els.map((e) => Number(e.dataset.seq)));
  if (seqs.length !== 60 || seqs.some((s, i) => s !== i + 1)) throw new Error("history out of order: " + seqs);
  console.log("ok history pages back when scrolled up, in seq order");
  await roomButton(alice).locator(".unread").filter({ hasText: /^$/ }).waitFor({ state: "attached" });
  console.log("ok opening the room cleared alice's unread badge");

  await openRoom(bob);
  await bob.locator('#members li[data-user="alice"][data-status="online"]').waitFor();
  await alice.locator('#members li[data-user="bob"][data-status="online"]').waitFor();
  console.log("ok each sees the other online in the member list");

  await alice.fill("#message-input", "Train at 9");
  await alice.type("#message-input", "?");
  await bob.locator("#typing", { hasText: "alice is typing" }).waitFor();
  console.log("ok bob sees alice typing");
  await alice.press("#message-input", "Enter");
  await messageByText(bob, "Train at 9?").waitFor();
  await bob.locator("#typing").filter({ hasText: /^$/ }).waitFor({ state: "attached" });
  console.log("ok bob got the message; the typing indicator is gone");
  await messageByText(alice, "Train at 9?").locator('.state[data-state="read"]').waitFor();
  console.log("ok alice's message shows read (bob has the room open)");

  await bob.type("#message-input", "Yes, 9:00");
  await alice.locator("#typing", { hasText: "bob is typing" }).waitFor();
  await bob.press("#message-input", "Enter");
  await messageByText(alice, "Yes, 9:00").waitFor();
  await messageByText(bob, "Yes, 9:00").locator('.state[data-state="read"]').waitFor();
  console.log("ok bob's reply reached alice and shows read");

  // A second tab of alice's browser: it shares the first tab's connection.
  const alice2 = await openUser(aliceCtx);
  await alice2.locator("#app").waitFor({ state: "visible" });
  await openRoom(alice2);
  await send(bob, "I will bring the map too");
  await messageByText(alice, "I will bring the map too").waitFor();
  await messageByText(alice2, "I will bring the map too").waitFor();
  const roles = [];
  for (const page of [alice, alice2]) roles.push(await page.evaluate(() => window.tetherApp.client().role));
  console.log(`ok alice's two tabs got bob's message over one connection (roles: ${roles.join(", ")})`);

  if (shots) {
    await alice.locator("#message-input").fill("");
    await alice.screenshot({ path: `${shots}/web-app-room.png` });
    console.log("ok screenshot of the room view");
  }

  // Bob goes away: his only page closes (no bye: the server waits its grace).
  await bob.close();
  await alice.locator('#members li[data-user="bob"][data-status="offline"]').waitFor({ timeout: 30_000 });
  const seen = await alice.textContent('#members li[data-user="bob"] .presence');
  if (!/last seen/.test(seen)) throw new Error("no last seen for offline bob: " + seen);
  console.log("ok alice sees bob offline: " + seen.trim());
  await send(alice, "while you were away 1");
  await send(alice, "while you were away 2");
  await messageByText(alice, "while you were away 2").locator('.state[data-state="sent"]').waitFor();
  console.log("ok alice's messages to offline bob show sent, not delivered");

  // Bob comes back: the same browser profile signs in again by itself.
  bob = await openUser(bobCtx);
  await bob.locator("#app").waitFor({ state: "visible" });
  await roomButton(bob).locator(".unread", { hasText: "2" }).waitFor();
  console.log("ok bob is back, with 2 unread");
  await openRoom(bob);
  await messageByText(bob, "while you were away 2").waitFor();
  await expectCount(bob, "while you were away 1", 1);
  await alice.locator('#members li[data-user="bob"][data-status="online"]').waitFor();
  await messageByText(alice, "while you were away 2").locator('.state[data-state="read"]').waitFor();
  console.log("ok alice sees bob online again and her messages read");

  // The server drops both connections; the banner shows; nothing is lost.
  for (const page of [alice, bob]) await watchBanner(page);
  // The Python side checks that it drops exactly two connections: alice's two
  // tabs share one.
  console.log("DROP");
  await dropped();
  await alice.fill("#message-input", "sent across the drop");
  await alice.press("#message-input", "Enter");
  for (const page of [alice, bob]) {
    await poll("the reconnecting banner was shown", () => page.evaluate(() => window.__bannerSeen));
    await page.locator("#banner").waitFor({ state: "hidden" });
    await page.locator('#connection[data-state="open"]').waitFor();
  }
  console.log("ok both showed the reconnecting banner, then reconnected");
  await messageByText(bob, "sent across the drop").waitFor();
  await send(bob, "after the drop");
  await messageByText(alice, "after the drop").waitFor();
  for (const page of [alice, bob]) {
    for (const text of ["sent across the drop", "after the drop", "Train at 9?", "while you were away 1"]) {
      await expectCount(page, text, 1);
    }
  }
  const aliceSeqs = await alice.$$eval("#messages li[data-seq]", (els) => els.map((e) => Number(e.dataset.seq)));
  if (aliceSeqs.some((s, i) => s !== i + 1)) throw new Error("gaps or duplicates after the drop: " + aliceSeqs);
  console.log(`ok nothing lost or doubled across the drop (${aliceSeqs.length} messages, seq 1..${aliceSeqs.length})`);

  // Creating and inviting: alice makes a room and invites bob; it shows up for him.
  await alice.click("summary >> text=New room");
  await alice.fill("#create-name", "Book club");
  await alice.click("#create-submit");
  await alice.locator("#room-title", { hasText: "Book club" }).waitFor();
  await alice.locator("#history-start").waitFor({ state: "visible" });
  if (await alice.locator("#messages li").count()) throw new Error("the new room shows another room's messages");
  await alice.fill("#invite-user", "bob");
  await alice.click("#invite-submit");
  await alice.locator('#members li[data-user="bob"]').waitFor();
  await bob.locator("#rooms button", { hasText: "Book club" }).waitFor();
  console.log("ok alice created a room and invited bob; it is in bob's room list");
  await roomButton(alice).click();
  await alice.locator("#room-title", { hasText: "Weekend trip" }).waitFor();
  const again = await alice.$$eval("#messages li[data-seq]", (els) => els.map((e) => Number(e.dataset.seq)));
  if (again.length !== aliceSeqs.length || again.some((q, i) => q !== i + 1)) throw new Error("room switch: " + again);

  // This server runs without media workers: joining a call says so.
  await alice.click("#call-join");
  await alice.locator("#room-error", { hasText: "Could not join the call" }).waitFor();
  await alice.locator("#call").waitFor({ state: "hidden" });
  console.log("ok without media workers, joining a call fails visibly: " + (await alice.textContent("#room-error")));

  // Leaving: bob leaves the room; alice's member list loses him.
  await bob.click("#leave-room");
  await roomButton(bob).waitFor({ state: "detached" });
  await alice.locator('#members li[data-user="bob"]').waitFor({ state: "detached" });
  console.log("ok bob left the room; alice's member list follows");

  await alice.click("#signout");
  for (const page of [alice, alice2]) await page.locator("#signin-form").waitFor({ state: "visible" });
  console.log("ok signing out in one tab signs out both tabs of alice's browser");
  await aliceCtx.close();
  await bobCtx.close();
}

async function call() {
  const aliceCtx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const bobCtx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const alice = await openUser(aliceCtx);
  const bob = await openUser(bobCtx);
  await signInToken(alice, aliceToken);
  await signInName(bob, "bob");
  await openRoom(alice);
  await openRoom(bob);
  await alice.click("#call-join");
  await alice.locator("#call").waitFor({ state: "visible" });
  await alice.locator('#tiles .tile.local').waitFor();
  await bob.click("#call-join");
  console.log("ok both joined the call");
  for (const [name, page, other] of [["alice", alice, "bob"], ["bob", bob, "alice"]]) {
    await page.locator("#tiles .tile:not(.local) .name", { hasText: other }).waitFor({ timeout: 30_000 });
    const stats = await poll(`${name} decodes ${other}'s video`, async () => {
      const s = await page.evaluate(() => window.tetherApp.callStats());
      return s && s.framesDecoded > 10 ? s : null;
    }, 45_000);
    console.log(`ok ${name} decodes ${other}'s video: ${stats.framesDecoded} frames; publishes rids ${stats.rids.sort().join(",")}`);
  }
  const first = await alice.evaluate(() => window.tetherApp.callStats());
  await poll("alice keeps decoding", async () => {
    const s = await alice.evaluate(() => window.tetherApp.callStats());
    return s.framesDecoded > first.framesDecoded + 10;
  });
  console.log("ok the video keeps flowing");
  const size = await alice.$eval("#tiles .tile:not(.local) video", (v) => [v.videoWidth, v.videoHeight]);
  if (!(size[0] > 0 && size[1] > 0)) throw new Error("remote video has no size: " + size);
  console.log(`ok alice shows bob's video at ${size[0]}x${size[1]}`);

  await alice.click("#call-mic");
  await alice.locator('#call-mic[aria-pressed="true"]').waitFor();
  await bob.locator('#tiles .tile[data-audio-muted="true"] .name', { hasText: "alice" }).waitFor();
  console.log("ok alice muted her microphone; bob sees it");
  await alice.click("#call-mic");
  await bob.locator('#tiles .tile[data-audio-muted="false"] .name', { hasText: "alice" }).waitFor();
  console.log("ok and unmuted");

  if (shots) {
    await alice.screenshot({ path: `${shots}/web-app-call.png` });
    console.log("ok screenshot of the call view");
  }

  // The signaling connections drop: the call carries on, media untouched.
  for (const page of [alice, bob]) await watchBanner(page);
  console.log("DROP");
  await dropped();
  const before = await bob.evaluate(() => window.tetherApp.callStats());
  for (const page of [alice, bob]) {
    await poll("the reconnecting banner was shown", () => page.evaluate(() => window.__bannerSeen));
    await page.locator('#connection[data-state="open"]').waitFor();
  }
  await poll("bob keeps decoding after the reconnect", async () => {
    const s = await bob.evaluate(() => window.tetherApp.callStats());
    return s.framesDecoded > before.framesDecoded + 10;
  });
  for (const page of [alice, bob]) {
    const count = await page.locator("#tiles .tile").count();
    if (count !== 2) throw new Error(`${count} tiles after the reconnect, expected 2`);
  }
  await alice.click("#call-cam");
  await bob.locator('#tiles .tile[data-video-muted="true"] .name', { hasText: "alice" }).waitFor();
  const rejoins = await alice.evaluate(() => window.tetherApp.callStats().then((s) => s.rejoins));
  console.log(`ok after a reconnect the call goes on (media ${rejoins.join(", ")}): video flows, mute reaches bob`);
  await alice.click("#call-cam");
  await bob.click("#call-leave");
  await bob.locator("#call").waitFor({ state: "hidden" });
  await alice.locator("#tiles .tile:not(.local)").waitFor({ state: "detached", timeout: 30_000 });
  console.log("ok bob left the call; alice's tile of bob is gone");
  await alice.click("#call-leave");
  await aliceCtx.close();
  await bobCtx.close();
}

let failed = false;
try {
  if (mode === "chat") await chat();
  else await call();
  if (offsite.length) throw new Error("the page fetched other origins: " + offsite.join(", "));
  if (pageErrors.length) throw new Error("page errors: " + pageErrors.join("; "));
  console.log("PASS");
} catch (err) {
  failed = true;
  console.log("FAIL " + (err && err.message ? err.message : err));
  if (pageErrors.length) console.log("page errors: " + pageErrors.join("; "));
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
