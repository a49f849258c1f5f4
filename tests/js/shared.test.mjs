// One connection shared by several "tabs" (leader election over BroadcastChannel),
// against a real server. The SharedWorker mode runs in browsers only; its host
// logic (Host) is the same as the leader's.
import assert from "node:assert/strict";
import { test } from "node:test";

import { connectShared } from "../../tether/web/sdk/shared.js";
import { open, record, serverEnv, until } from "./helpers.mjs";

/** An in-process Web Locks stand-in: exclusive locks, granted in request order. */
class FakeLocks {
  constructor() {
    /** @type {Map<string, Array<() => void>>} */
    this.queues = new Map();
  }
  /** @param {string} name @param {() => Promise<any> | any} callback */
  request(name, callback) {
    return new Promise((resolve) => {
      const queue = this.queues.get(name) ?? [];
      this.queues.set(name, queue);
      const run = async () => {
        try {
          resolve(await callback());
        } finally {
          queue.shift();
          queue[0]?.();
        }
      };
      queue.push(run);
      if (queue.length === 1) run();
    });
  }
}

/** @param {string} channel @param {any} locks @param {string} device */
function openTab(channel, locks, device) {
  const { url, tokens } = serverEnv();
  return connectShared(url, {
    token: tokens.carol,
    mode: "leader",
    channel,
    locks,
    device,
    WebSocket: globalThis.WebSocket,
    backoffBaseMs: 50,
    backoffCapMs: 500,
  });
}

for (const [label, makeLocks] of [
  ["Web Locks", () => new FakeLocks()],
  ["heartbeat election", () => null],
]) {
  test(`tabs share one connection (${label}); another tab takes over when the leader leaves`, async () => {
    const channel = `test-${label}-${Date.now()}`;
    const locks = makeLocks();
    const device = `browser-${label.replace(/\W/g, "")}`;
    const dave = await open("dave", { device: `dave-${device}` });
    const tabA = await openTab(channel, locks, device);
    const tabB = await openTab(channel, locks, device);
    try {
      assert.equal(tabA.role, "leader");
      assert.equal(tabB.role, "follower");
      assert.equal(tabB.user, "carol");
      const seenA = record(tabA, ["msg", "sent", "typing"]);
      const seenB = record(tabB, ["msg", "sent", "typing"]);

      // A follower's request goes through the leader's connection.
      const room = await tabB.createRoom(`shared ${label}`, { members: ["dave"] });
      const [presence] = await dave.subscribePresence(["carol"]);
      assert.equal(presence.devices, 1, "the browser is one device");
      const daveSeen = record(dave, ["msg", "presence"]);
      const sent = await tabB.send(room.id, "from tab B");
      assert.equal(sent.seq, 1);
      await until(() => daveSeen.msg.length === 1, "dave gets tab B's message");
      // Every tab learns of the send (the sending tab too).
      await until(() => seenA.sent.length === 1 && seenB.sent.length === 1, "sent in both tabs");
      await dave.send(room.id, "to both tabs");
      await until(() => seenA.msg.length === 1 && seenB.msg.length === 1, "both tabs get dave's message");
      dave.typing(room.id, true);
      await until(() => seenB.typing.some((t) => t.users.includes("dave")), "typing relayed");

      // Idle only when every tab is idle.
      await tabA.setIdle(true);
      await tabB.history(room.id); // a round trip through the host
      assert.ok(!daveSeen.presence.some((p) => p.status === "away"), "one active tab keeps the browser online");
      await tabB.setIdle(true);
      await until(() => daveSeen.presence.some((p) => p.status === "away"), "away once all tabs are idle");
      await tabB.setIdle(false);
      await until(() => daveSeen.presence.at(-1)?.status === "online", "online again");

      // The leader tab leaves; messages sent meanwhile reach tab B once, in order.
      tabA.close();
      await dave.send(room.id, "while no tab leads");
      await dave.send(room.id, "again");
      await until(() => tabB.role === "leader", "tab B takes over", 15000);
      await until(() => seenB.msg.length === 3, "tab B gets what it missed", 15000);
      await dave.send(room.id, "after the take-over");
      await until(() => seenB.msg.length === 4, "live again");
      assert.deepEqual(seenB.msg.map((m) => m.seq), [2, 3, 4, 5]);
      const late = await tabB.send(room.id, "tab B leads now");
      assert.equal(late.seq, 6);
    } finally {
      tabA.close();
      tabB.close();
      dave.close();
    }
  });
}

test("SharedWorker mode: tabs talk to one host over MessagePorts (a stand-in worker scope)", async () => {
  const { serveTabs } = await import("../../tether/web/sdk/shared.js");
  const { url, tokens } = serverEnv();
  const scope = new EventTarget();
  const host = serveTabs(scope, { WebSocket: globalThis.WebSocket });
  let workers = 0;
  // What a browser does for `new SharedWorker(url)`: one scope, a port per tab.
  class StandInWorker {
    constructor() {
      workers += 1;
      const { port1, port2 } = new MessageChannel();
      this.port = port1;
      queueMicrotask(() => scope.dispatchEvent(Object.assign(new Event("connect"), { ports: [port2] })));
    }
  }
  const options = { token: tokens.carol, device: "browser-worker", SharedWorker: StandInWorker };
  const dave = await open("dave", { device: "dave-worker" });
  const tabA = await connectShared(url, options);
  const tabB = await connectShared(url, options);
  try {
    assert.equal(workers, 2);
    assert.equal(tabA.role, "worker");
    assert.equal(tabB.role, "worker");
    assert.equal(tabB.user, "carol");
    const seenA = record(tabA, ["msg", "sent"]);
    const seenB = record(tabB, ["msg", "sent"]);
    const room = await tabA.createRoom("worker room", { members: ["dave"] });
    const [presence] = await dave.subscribePresence(["carol"]);
    assert.equal(presence.devices, 1);
    const sent = await tabB.send(room.id, "from B");
    assert.equal(sent.seq, 1);
    await until(() => seenA.sent.length === 1 && seenB.sent.length === 1, "sent in both tabs");
    await dave.send(room.id, "to both");
    await until(() => seenA.msg.length === 1 && seenB.msg.length === 1, "both tabs get it");
    // One tab leaves: the other keeps the connection.
    tabA.close();
    await dave.send(room.id, "to B");
    await until(() => seenB.msg.length === 2, "B still connected");
    assert.equal(seenA.msg.length, 1);
    // Errors cross the port with their class.
    await assert.rejects(tabB.history("no-such-room"), (err) => err.name === "RequestError" && err.code === 121);
  } finally {
    tabA.close();
    tabB.close();
    host.stop();
    dave.close();
  }
});

test("a SharedWorker that never starts falls back to a leader tab", async () => {
  const { url, tokens } = serverEnv();
  class DeadWorker {
    constructor() {
      this.port = new MessageChannel().port1; // nobody listens at the other end
    }
  }
  const tab = await connectShared(url, {
    token: tokens.carol,
    device: "browser-fallback",
    SharedWorker: DeadWorker,
    channel: `fallback-${Date.now()}`,
    locks: null,
    WebSocket: globalThis.WebSocket,
  });
  try {
    assert.equal(tab.role, "leader");
    assert.ok(Array.isArray(await tab.listRooms()));
  } finally {
    tab.close();
  }
});

test("a room created, joined or left in one tab is announced to the other tabs", async () => {
  const channel = `test-rooms-${Date.now()}`;
  const locks = new FakeLocks();
  const dave = await open("dave", { device: "dave-rooms" });
  const tabA = await openTab(channel, locks, "browser-rooms");
  const tabB = await openTab(channel, locks, "browser-rooms");
  try {
    const seenA = record(tabA, ["room", "member"]);
    const seenB = record(tabB, ["room", "member"]);
    const mine = await tabB.createRoom("announced", { kind: "public" });
    await until(() => seenA.room.some((e) => e.room.id === mine.id), "tab A learns of the new room");
    assert.equal(seenA.room.find((e) => e.room.id === mine.id).room.name, "announced");
    const daves = await dave.createRoom("dave's", { kind: "public" });
    await tabA.joinRoom(daves.id);
    await until(() => seenB.room.some((e) => e.room.id === daves.id), "tab B learns that carol joined");
    await tabA.leaveRoom(daves.id);
    await until(
      () => seenB.member.some((e) => e.room === daves.id && e.user === "carol" && e.action === "left"),
      "tab B learns that carol left",
    );
  } finally {
    tabA.close();
    tabB.close();
    dave.close();
  }
});
