// The web app's pure helpers (tether/web/app/format.js) under Node's test runner;
// tests/browser/test_web_app.py runs it (no browser needed).
import assert from "node:assert/strict";
import { test } from "node:test";

import { ago, bodyText, presenceText, receiptState, shortKey, typingText } from "../../tether/web/app/format.js";

test("bodyText: the app's {text} maps, plain strings, anything else as JSON", () => {
  assert.equal(bodyText({ text: "hi" }), "hi");
  assert.equal(bodyText("plain"), "plain");
  assert.equal(bodyText(null), "");
  assert.equal(bodyText({ kind: "poll", n: 2n }), '{"kind":"poll","n":"2"}');
  assert.equal(bodyText([1, 2]), "[1,2]");
});

test("ago: minutes, hours, days, then a date", () => {
  const now = 1_767_258_000_000;
  assert.equal(ago(now - 10_000, now), "just now");
  assert.equal(ago(now - 60_000, now), "1 minute ago");
  assert.equal(ago(now - 5 * 60_000, now), "5 minutes ago");
  assert.equal(ago(now - 3 * 3_600_000, now), "3 hours ago");
  assert.equal(ago(now - 24 * 3_600_000, now), "yesterday");
  assert.equal(ago(now - 3 * 24 * 3_600_000, now), "3 days ago");
  assert.equal(ago(now - 30 * 24 * 3_600_000, now), new Date(now - 30 * 24 * 3_600_000).toLocaleDateString());
  assert.equal(ago(now + 5000, now), "just now", "a clock slightly ahead is not the future");
});

test("presenceText: online, away, offline with last seen when known", () => {
  const now = 1_767_258_000_000;
  assert.equal(presenceText({ status: "online" }, now), "online");
  assert.equal(presenceText({ status: "away" }, now), "away");
  assert.equal(presenceText({ status: "offline", lastSeen: null }, now), "offline");
  assert.equal(presenceText({ status: "offline", lastSeen: now - 120_000 }, now), "offline · last seen 2 minutes ago");
  assert.equal(presenceText(undefined, now), "offline");
});

test("receiptState: read when every other member read, delivered when on all their devices", () => {
  const members = [
    { user: "me", read: 0, delivered: 0 },
    { user: "bob", read: 5, delivered: 7 },
    { user: "carol", read: 3, delivered: 9 },
  ];
  assert.deepEqual(receiptState(3, "me", members), { state: "read", readBy: ["bob", "carol"] });
  assert.deepEqual(receiptState(5, "me", members), { state: "delivered", readBy: ["bob"] });
  assert.deepEqual(receiptState(7, "me", members), { state: "delivered", readBy: [] });
  assert.deepEqual(receiptState(8, "me", members), { state: "sent", readBy: [] });
  // A read position counts as delivered.
  assert.equal(receiptState(4, "me", [{ user: "bob", read: 4, delivered: 0 }, { user: "c", read: 9, delivered: 0 }]).state, "read");
  assert.equal(receiptState(4, "me", [{ user: "bob", read: 4, delivered: 0 }, { user: "c", read: 1, delivered: 4 }]).state, "delivered");
  // Alone in the room (notes to self): sent.
  assert.equal(receiptState(1, "me", [{ user: "me", read: 9, delivered: 9 }]).state, "sent");
});

test("typingText: one, two, many", () => {
  assert.equal(typingText([]), "");
  assert.equal(typingText(["bob"]), "bob is typing…");
  assert.equal(typingText(["bob", "carol"]), "bob and carol are typing…");
  assert.equal(typingText(["a", "b", "c"]), "3 people are typing…");
});

test("shortKey: 16 hex characters, stable, different for different tokens", () => {
  const key = shortKey("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.sig");
  assert.match(key, /^[0-9a-f]{16}$/);
  assert.equal(shortKey("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.sig"), key);
  assert.notEqual(shortKey("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.siG"), key);
  assert.notEqual(shortKey("dev:alice"), shortKey("dev:bob"));
  assert.match(shortKey(""), /^[0-9a-f]{16}$/);
});
