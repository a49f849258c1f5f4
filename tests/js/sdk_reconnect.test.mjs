// The SDK across dropped connections: resume with no loss and no duplicates,
// resend of an unacknowledged send, close codes that must not reconnect.
import assert from "node:assert/strict";
import { test } from "node:test";

import { serverEnv, open, record, startProxy, until } from "./helpers.mjs";

test("reconnect after the connection drops: nothing lost, nothing twice, in seq order", async () => {
  const { url } = serverEnv();
  const proxy = await startProxy(url);
  const carol = await open("carol", { url: proxy.url });
  const dave = await open("dave");
  try {
    const seen = record(carol, ["msg", "reconnecting", "reconnected", "recovered"]);
    const room = await dave.createRoom("drops", { members: ["carol"] });
    await carol.listRooms(); // carol tracks the room from now on
    await dave.send(room.id, "before 1");
    await dave.send(room.id, "before 2");
    await until(() => seen.msg.length === 2, "the first two messages");

    // The network stalls, messages are sent meanwhile, then the connection dies.
    proxy.stall(true);
    for (let i = 0; i < 5; i++) await dave.send(room.id, `during ${i}`);
    proxy.cut();
    await until(() => seen.reconnected.length === 1, "the reconnect", 15000);
    assert.equal(seen.reconnected[0].resumed, true);
    assert.ok(seen.reconnecting.length >= 1);
    assert.equal(seen.reconnecting[0].code, 1006);
    for (let i = 0; i < 3; i++) await dave.send(room.id, `after ${i}`);
    await until(() => seen.msg.length === 10, "every message", 15000);
    assert.deepEqual(
      seen.msg.map((m) => m.seq),
      [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
    );
    assert.ok(seen.recovered.some((r) => r.room === room.id && r.complete));
    // A second drop with nothing missed: still no duplicates.
    proxy.cut();
    await until(() => seen.reconnected.length === 2, "the second reconnect", 15000);
    await dave.send(room.id, "last");
    await until(() => seen.msg.length === 11, "the last message");
    assert.deepEqual(seen.msg.map((m) => m.seq), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
  } finally {
    carol.close();
    dave.close();
    await proxy.close();
  }
});

test("a send whose answer was lost is resent with its cid and stored once", async () => {
  const { url } = serverEnv();
  const proxy = await startProxy(url);
  const carol = await open("carol", { url: proxy.url, device: "carol-resend" });
  const dave = await open("dave", { device: "dave-resend" });
  try {
    const daveSeen = record(dave, ["msg"]);
    const carolSeen = record(carol, ["msg", "sent", "reconnected"]);
    const room = await dave.createRoom("resend", { members: ["carol"] });
    await carol.listRooms();
    // The reply never reaches carol: the server stores the message, dave gets it.
    proxy.stall(true);
    const sending = carol.send(room.id, { text: "only once" });
    await until(() => daveSeen.msg.length === 1, "the message stored");
    proxy.cut();
    const result = await sending;
    assert.equal(result.seq, 1);
    assert.equal(carolSeen.sent.length, 1);
    await until(() => carolSeen.reconnected.length === 1, "the reconnect");
    const page = await dave.history(room.id);
    assert.equal(page.messages.length, 1);
    assert.equal(page.messages[0].cid, result.cid);
    assert.equal(carolSeen.msg.length, 0, "carol's own message never became a msg event");
    // One more round trip, then no stray push arrived either.
    await carol.send(room.id, "next");
    assert.deepEqual((await dave.history(room.id)).messages.map((m) => m.seq), [1, 2]);
    assert.equal(carolSeen.msg.length, 0);
  } finally {
    carol.close();
    dave.close();
    await proxy.close();
  }
});

test("requests made while disconnected wait for the new connection", async () => {
  const { url } = serverEnv();
  const proxy = await startProxy(url);
  const carol = await open("carol", { url: proxy.url, device: "carol-queue" });
  try {
    const seen = record(carol, ["reconnecting", "reconnected"]);
    proxy.cut();
    await until(() => seen.reconnecting.length >= 1, "the drop noticed");
    const rooms = await carol.listRooms();
    assert.ok(Array.isArray(rooms));
    assert.ok(seen.reconnected.length >= 1);
  } finally {
    carol.close();
    await proxy.close();
  }
});

test("a close code that says stop ends the client: 3507 from a newer resume of the session", async () => {
  const { url, tokens } = serverEnv();
  const first = await open("dave", { device: "dave-stale" });
  const closed = new Promise((resolve) => first.on("closed", resolve));
  // A second client resuming the same session makes the server close the first with 3507.
  const { connect } = await import("../../tether/web/sdk/client.js");
  const second = await connect(url, { token: tokens.dave, restore: first.snapshot() });
  try {
    const reason = await closed;
    assert.equal(reason.code, 3507);
    assert.equal(reason.reconnect, false);
    assert.equal(first.closed.code, 3507);
    await assert.rejects(first.listRooms(), (err) => err.code === 3507);
    assert.equal(second.welcome.resumed, true);
  } finally {
    first.close();
    second.close();
  }
});

test("a gap larger than the server replays is paged from history, still in order and once", async () => {
  // The server under test replays at most 10 messages (resume_max_replay).
  const { url } = serverEnv();
  const proxy = await startProxy(url);
  const carol = await open("carol", { url: proxy.url, device: "carol-gap" });
  const dave = await open("dave", { device: "dave-gap" });
  try {
    const seen = record(carol, ["msg", "recovered", "reconnected", "resync-failed"]);
    const room = await dave.createRoom("big gap", { members: ["carol"] });
    await carol.listRooms();
    await dave.send(room.id, "seen live");
    await until(() => seen.msg.length === 1, "the first message");
    proxy.stall(true);
    for (let i = 0; i < 25; i++) await dave.send(room.id, `missed ${i}`);
    proxy.cut();
    await until(() => seen.recovered.some((r) => r.room === room.id), "the room recovered", 15000);
    const recovered = seen.recovered.find((r) => r.room === room.id);
    assert.equal(recovered.complete, false);
    assert.equal(recovered.head, 26);
    await until(() => seen.msg.length === 26, "every missed message", 15000);
    assert.deepEqual(seen.msg.map((m) => m.seq), Array.from({ length: 26 }, (_, i) => i + 1));
    assert.equal(seen["resync-failed"].length, 0);
  } finally {
    carol.close();
    dave.close();
    await proxy.close();
  }
});

test("a silent server is noticed (heartbeat deadline) and the client reconnects", async () => {
  const { url } = serverEnv();
  const proxy = await startProxy(url);
  const carol = await open("carol", { url: proxy.url, device: "carol-silent" });
  try {
    const seen = record(carol, ["reconnecting", "reconnected"]);
    // heartbeat 1 s + timeout 3 s on the test server: silence is noticed within ~4 s.
    assert.equal(carol.welcome.heartbeatMs + carol.welcome.timeoutMs, 4000);
    proxy.stall(true);
    await until(() => seen.reconnecting.length >= 1, "the silence noticed", 10000);
    assert.equal(seen.reconnecting[0].code, 1006);
    assert.match(seen.reconnecting[0].reason, /heartbeat/);
    proxy.stall(false);
    await until(() => seen.reconnected.length >= 1, "reconnected", 10000);
    assert.ok(carol.connected);
    assert.ok(Array.isArray(await carol.listRooms()));
  } finally {
    carol.close();
    await proxy.close();
  }
});

test("a send to a room the client does not track is resent and answered dup", async () => {
  const { url } = serverEnv();
  const proxy = await startProxy(url);
  const carol = await open("carol", { url: proxy.url, device: "carol-dup" });
  const dave = await open("dave", { device: "dave-dup" });
  try {
    const daveSeen = record(dave, ["msg", "room"]);
    // dave creates the room; carol never lists it, so she does not resume it.
    const room = await dave.createRoom("untracked", { members: ["carol"] });
    proxy.stall(true);
    const sending = carol.send(room.id, "once", { cid: "carol-untracked-1" });
    await until(() => daveSeen.msg.length === 1, "stored");
    proxy.cut();
    const result = await sending;
    assert.equal(result.dup, true, "the resend found the stored message");
    assert.equal(result.seq, 1);
    assert.equal((await dave.history(room.id)).messages.length, 1);
  } finally {
    carol.close();
    dave.close();
    await proxy.close();
  }
});

test("3006 TOKEN_EXPIRED: a tokenProvider gives a fresh token and the client reconnects", async () => {
  const { url, tokens } = serverEnv();
  await assert.rejects(
    open("carol", { token: tokens["carol-expired"], device: "carol-expired-0" }),
    (err) => err.name === "AuthenticationError" && err.expired === true && err.code === 3006,
  );
  const proxy = await startProxy(url);
  let asked = 0;
  const carol = await open("carol", {
    url: proxy.url,
    device: "carol-expiry",
    tokenProvider: () => {
      asked += 1;
      return tokens.carol;
    },
  });
  try {
    const seen = record(carol, ["reconnecting", "reconnected", "closed"]);
    // The token in hand expires while the connection is down.
    carol._token = tokens["carol-expired"];
    proxy.cut();
    await until(() => seen.reconnected.length === 1, "reconnected with a fresh token", 15000);
    assert.equal(asked, 1);
    assert.ok(seen.reconnecting.some((r) => r.code === 3006));
    assert.equal(seen.closed.length, 0);
  } finally {
    carol.close();
    await proxy.close();
  }
  // Without a provider, 3006 ends the client with an expired AuthenticationError.
  const proxy2 = await startProxy(url);
  const stuck = await open("carol", { url: proxy2.url, device: "carol-expiry-2" });
  try {
    const closed = new Promise((resolve) => stuck.on("closed", resolve));
    stuck._token = tokens["carol-expired"];
    proxy2.cut();
    const reason = await closed;
    assert.equal(reason.name, "AuthenticationError");
    assert.equal(reason.expired, true);
  } finally {
    stuck.close();
    await proxy2.close();
  }
});

test("bye: the user signs out, the device is offline at once, the client is closed", async () => {
  const alice = await open("alice", { device: "alice-bye" });
  const bob = await open("bob", { device: "bob-bye" });
  try {
    await alice.openDm("bob");
    const seen = record(bob, ["presence"]);
    const [before] = await bob.subscribePresence(["alice"]);
    assert.equal(before.status, "online");
    await alice.bye();
    assert.equal(alice.closed.code, 1000);
    await until(() => seen.presence.some((p) => p.user === "alice" && p.status === "offline"), "alice offline without grace");
    await assert.rejects(alice.listRooms(), (err) => err.name === "ConnectionClosed");
  } finally {
    alice.close();
    bob.close();
  }
});
