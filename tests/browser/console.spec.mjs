// Drives the admin console page (GET /admin/) in the system's headless Chromium.
//
// Usage: node console.spec.mjs <server url> <admin token> <room id> <message> [screenshot path]
// Exits 0 when every step passed; prints "ok <step>" lines as it goes and
// "FAIL <reason>" on the first failure (tests/browser/test_console_page.py
// runs it against a real server and checks the message reached the clients).
import { chromium } from "playwright-core";

const [url, token, roomId, message, screenshot] = process.argv.slice(2);
if (!url || !token || !roomId || !message) {
  console.error("usage: node console.spec.mjs <url> <token> <room id> <message> [screenshot]");
  process.exit(2);
}

const STEP_MS = 10_000;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 1600, height: 900 } });
  const offsite = [];
  const pageErrors = [];
  page.on("request", (req) => { if (!req.url().startsWith(url)) offsite.push(req.url()); });
  page.on("pageerror", (err) => pageErrors.push(String(err)));
  page.on("dialog", (dialog) => dialog.accept());
  page.setDefaultTimeout(STEP_MS);

  await page.goto(url + "/admin/");
  await page.locator("#token").waitFor({ state: "visible" });
  console.log("ok login form shown");

  await page.fill("#token", "not-a-token");
  await page.click("#login-submit");
  await page.locator("#login-error").filter({ hasText: /\S/ }).waitFor();
  console.log("ok bad token refused: " + (await page.textContent("#login-error")));

  await page.fill("#token", token);
  await page.click("#login-submit");
  for (const kind of ["connection", "user", "room"]) {
    await page.locator(`#actors tbody tr[data-kind="${kind}"]`).first().waitFor();
  }
  console.log("ok table has connection, user and room rows");

  const depths = await page.$$eval("#actors tbody tr", (rows) => rows.map((r) => Number(r.children[3].textContent)));
  if (depths.some((d, i) => i > 0 && d > depths[i - 1])) throw new Error("rows not sorted by mailbox: " + depths);
  console.log("ok sorted by mailbox depth");

  const stored = await page.evaluate(() => sessionStorage.getItem("tether.admin.token"));
  if (stored !== token) throw new Error("token not kept in sessionStorage");

  await page.locator(`#actors tbody tr[data-kind="room"][data-key="${roomId}"]`).click();
  await page.locator(`#detail[data-key="${roomId}"]`).waitFor({ state: "visible" });
  const detailText = await page.textContent("#detail-fields");
  for (const member of ["alice", "bob"]) {
    if (!detailText.includes(member)) throw new Error(`room detail lacks member ${member}: ${detailText}`);
  }
  console.log("ok room detail shows its members");

  await page.fill("#post-body", message);
  await page.click("#post-send");
  await page.locator("#status").filter({ hasText: "done" }).waitFor();
  const status = await page.textContent("#status");
  if (/failed/.test(status)) throw new Error("post failed: " + status);
  console.log("ok posted: " + status);

  await page.click("#trace-start");
  await page.locator("#trace-state").filter({ hasText: "tracing" }).waitFor();
  console.log("ok trace started");

  if (screenshot) {
    await page.evaluate(() => { window.scrollTo(0, 0); document.getElementById("detail").scrollTop = 0; });
    await page.screenshot({ path: screenshot, fullPage: false });
    console.log("ok screenshot " + screenshot);
  }
  if (offsite.length) throw new Error("the page fetched other origins: " + offsite.join(", "));
  if (pageErrors.length) throw new Error("page errors: " + pageErrors.join("; "));
  console.log("PASS");
} catch (err) {
  failed = true;
  console.log("FAIL " + (err && err.message ? err.message : err));
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
