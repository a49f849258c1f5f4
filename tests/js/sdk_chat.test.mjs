// The SDK against a real tether server: chat, typing, receipts, presence, history.
import assert from "node:assert/strict";
import { test } from "node:test";

import { RequestError } from "../../tether/web/sdk/client.js";
import { open, record, until } from "./helpers.mjs";

test("two clients chat: messages, edits, deletes, typing, receipts, presence, history", async () => {
  const alice = await open("alice");
  const bob = await open("bob");
  try {
    assert.equal(alice.user, "alice");
    assert.ok(alice.welcome.heartbeatMs > 0);
    const bobSeen = record(bob, ["msg", "msg.edited", "msg.deleted", "typing", "room", "presence"]);
    const aliceSeen = record(alice, ["msg", "receipts", "read", "typing", "sent", "presence"]);

    const room = await alice.createRoom("js chat", { members: ["bob"] });
    assert.equal(room.kind, "private");
    await until(() => bobSeen.room.some((r) => r.room.id === room.id), "bob's room push");

    // presence: bob follows alice (they share a room now)
    const [snapshot] = await bob.subscribePresence(["alice"]);
    assert.equal(snapshot.user, "alice");
    assert.equal(snapshot.status, "online");
    await alice.setIdle(true);
    await until(() => bobSeen.presence.some((p) => p.user === "alice" && p.status === "away"), "alice away");
    await alice.setIdle(false);
    await until(() => bobSeen.presence.at(-1)?.status === "online", "alice online again");

    // typing: everyone gets the full list
    bob.typing(room.id, true);
    await until(() => aliceSeen.typing.some((t) => t.room === room.id && t.users.includes("bob")), "bob typing");

    // messages with cids; the sender's own copy is the result (and a `sent` event)
    const first = await bob.send(room.id, { text: "Train at 9?" });
    assert.equal(first.seq, 1);
    assert.equal(first.dup, false);
    await until(() => aliceSeen.msg.length === 1, "alice gets the message");
    assert.deepEqual(aliceSeen.msg[0].body, { text: "Train at 9?" });
    assert.equal(aliceSeen.msg[0].sender, "bob");
    assert.equal(aliceSeen.msg[0].cid, first.cid);
    // sending cleared bob's typing entry
    await until(() => aliceSeen.typing.at(-1)?.users.length === 0, "typing cleared");
    const second = await alice.send(room.id, "Yes! 9:00", { cid: "alice-cid-1" });
    assert.equal(second.seq, 2);
    assert.equal(aliceSeen.sent.at(-1).seq, 2);
    assert.equal(bobSeen.msg.length, 0, "bob's own message is not an event on his connection");
    await until(() => bobSeen.msg.some((m) => m.seq === 2), "bob gets alice's message");
    // the same cid again: stored once
    const again = await alice.send(room.id, "Yes! 9:00", { cid: "alice-cid-1" });
    assert.equal(again.seq, 2);
    assert.equal(again.dup, true);

    // edit and delete
    const editedAt = await bob.edit(room.id, 1, { text: "Train at 9:15?" });
    assert.ok(editedAt > 0);
    await assert.rejects(bob.edit(room.id, 2, "mine now"), (err) => err instanceof RequestError && err.code === 124);
    await alice.delete(room.id, 2);
    await until(() => bobSeen["msg.deleted"].some((d) => d.seq === 2), "bob sees the deletion");

    // receipts: delivered without ref, read with one
    await bob.ack(room.id, { delivered: 2, wait: false });
    await bob.ack(room.id, { read: 2 });
    await until(
      () => aliceSeen.receipts.some((r) => r.users.some((u) => u.user === "bob" && u.read === 2)),
      "alice sees bob's read receipt",
    );
    const members = await alice.members(room.id);
    assert.deepEqual(members.map((m) => m.user).sort(), ["alice", "bob"]);
    assert.equal(members.find((m) => m.user === "bob").read, 2);

    // history paging, tombstones included
    for (let i = 0; i < 5; i++) await alice.send(room.id, `m${i}`);
    const latest = await bob.history(room.id, { limit: 3 });
    assert.deepEqual(latest.messages.map((m) => m.seq), [5, 6, 7]);
    assert.equal(latest.more, true);
    const older = await bob.history(room.id, { before: 5, limit: 10 });
    assert.deepEqual(older.messages.map((m) => m.seq), [1, 2, 3, 4]);
    assert.equal(older.more, false);
    assert.deepEqual(older.messages[0].body, { text: "Train at 9:15?" });
    assert.ok(older.messages[0].editedAt > 0);
    assert.equal(older.messages[1].deleted, true);
    assert.equal(older.messages[1].body, null);
    const after = await bob.history(room.id, { after: 6 });
    assert.deepEqual(after.messages.map((m) => m.seq), [7]);

    // room list with unread counts, dm, public rooms
    const rooms = await bob.listRooms();
    const summary = rooms.find((r) => r.id === room.id);
    assert.equal(summary.lastSeq, 7);
    assert.equal(summary.readSeq, 2);
    assert.equal(summary.unread, 5);
    const dm = await alice.openDm("bob");
    assert.equal(dm.kind, "direct");
    assert.equal((await bob.openDm("alice")).id, dm.id);
    const lobby = await alice.createRoom("lobby", { kind: "public" });
    const joined = await bob.joinRoom(lobby.id);
    assert.equal(joined.id, lobby.id);
    await bob.leaveRoom(lobby.id);
    await assert.rejects(bob.history(lobby.id), (err) => err instanceof RequestError && err.code === 120);
  } finally {
    alice.close();
    bob.close();
  }
});

test("a refused token rejects open() with AuthenticationError and no reconnect", async () => {
  const { AuthenticationError } = await import("../../tether/web/sdk/client.js");
  await assert.rejects(open("alice", { token: "not-a-token" }), (err) => err instanceof AuthenticationError && err.code === 3502);
});
