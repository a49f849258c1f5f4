// Pure parts of the SDK: backoff, close codes, seq bookkeeping.
import assert from "node:assert/strict";
import { test } from "node:test";

import { RoomSeqs, SeqTracker, newCid, reconnectDelay, shouldReconnect } from "../../tether/web/sdk/client.js";

test("reconnect delays: full jitter within min(cap, base * 2^n); 3004 waits longer", () => {
  assert.equal(reconnectDelay(0, 500, 30000, null, () => 0.999999) < 500, true);
  assert.equal(reconnectDelay(3, 500, 30000, null, () => 1), 4000);
  assert.equal(reconnectDelay(20, 500, 30000, null, () => 1), 30000);
  assert.equal(reconnectDelay(2000, 500, 30000, null, () => 1), 30000, "huge attempts do not overflow");
  assert.equal(reconnectDelay(0, 500, 30000, null, () => 0), 0);
  // 3004: three doublings further, at least half the bound.
  assert.equal(reconnectDelay(0, 500, 30000, 3004, () => 0), 2000);
  assert.equal(reconnectDelay(0, 500, 30000, 3004, () => 1), 4000);
});

test("close codes: which reconnect", () => {
  for (const code of [1001, 1005, 1006, 1011, 1012, 1013, 1014, 3000, 3001, 3002, 3003, 3004, 3005, 3006, 3499, 4000, 4499]) {
    assert.equal(shouldReconnect(code), true, String(code));
  }
  for (const code of [1000, 1002, 1003, 1009, 3500, 3501, 3502, 3503, 3504, 3505, 3506, 3507, 3999, 4500, 4999]) {
    assert.equal(shouldReconnect(code), false, String(code));
  }
});

test("RoomSeqs: gaps, duplicates, skipping a gap", () => {
  const room = new RoomSeqs(3);
  room.soft = false;
  assert.equal(room.has(3), true);
  assert.equal(room.has(4), false);
  room.add(6);
  room.add(5);
  assert.equal(room.contig, 3);
  assert.deepEqual([...room.above].sort(), [5, 6]);
  room.add(4);
  assert.equal(room.contig, 6);
  assert.equal(room.above.size, 0);
  room.add(9);
  room.skipGap();
  assert.equal(room.contig, 9);
  // A soft position does not make lower seqs duplicates (a snapshot may be ahead of pushes).
  const soft = new RoomSeqs(10);
  assert.equal(soft.has(10), false);
});

test("SeqTracker: resume order, seeding, eviction", () => {
  const tracker = new SeqTracker(3);
  tracker.seed("quiet", 7);
  tracker.touch("a", 1).add(1);
  tracker.touch("b", 5).add(5);
  assert.deepEqual(Object.entries(tracker.resume()), [["b", 5], ["a", 1], ["quiet", 7]]);
  tracker.seed("a", 100); // already tracked: unchanged
  assert.equal(tracker.get("a").contig, 1);
  tracker.touch("c", 2).add(2); // evicts the least recently active ("quiet")
  assert.equal(tracker.get("quiet"), undefined);
  tracker.forget("b");
  assert.deepEqual(Object.keys(tracker.resume()), ["c", "a"]);
  tracker.get("a").holding = true;
  tracker.newConnection();
  assert.equal(tracker.get("a").holding, false);
  assert.equal(tracker.get("a").soft, false);
});

test("cids are 22 URL-safe characters and differ", () => {
  const cids = new Set(Array.from({ length: 1000 }, () => newCid()));
  assert.equal(cids.size, 1000);
  for (const cid of cids) assert.match(cid, /^[A-Za-z0-9_-]{22}$/);
});

test("a follower tab repeats safe calls on a new leader and interrupts the others", async () => {
  const { SharedClient } = await import("../../tether/web/sdk/shared.js");
  const { RequestInterrupted } = await import("../../tether/web/sdk/client.js");
  const tab = new SharedClient({ url: "ws://unused/ws", options: {}, tab: "tab-1" });
  /** @type {any[]} */
  const posted = [];
  tab._post = (msg) => posted.push(msg);
  const sending = tab.send("room-1", "hello", { cid: "c-1" });
  const creating = tab.createRoom("new room");
  assert.deepEqual(posted.map((m) => m.method), ["send", "createRoom"]);
  tab._hostChanged();
  await assert.rejects(creating, (err) => err instanceof RequestInterrupted && err.request === "createRoom");
  assert.deepEqual(posted.map((m) => m.method), ["send", "createRoom", "send"]);
  assert.deepEqual(posted[2].args, ["room-1", "hello", { cid: "c-1" }]);
  assert.equal(posted[2].id, posted[0].id, "the same call id: one answer settles it");
  tab.receive({ k: "result", tab: "tab-1", id: posted[2].id, ok: true, value: { seq: 1 } });
  assert.deepEqual(await sending, { seq: 1 });
  // Results for other tabs are not ours.
  const listing = tab.listRooms();
  tab.receive({ k: "result", tab: "tab-2", id: posted.at(-1).id, ok: true, value: ["wrong"] });
  tab.receive({ k: "result", tab: "tab-1", id: posted.at(-1).id, ok: false, error: { name: "RequestError", code: 120, reason: "no", temporary: false } });
  await assert.rejects(listing, (err) => err.name === "RequestError" && err.code === 120);
});
