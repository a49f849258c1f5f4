// Compiled (never run) by tests/js/test_js_sdk.py: what an application writes
// against index.d.ts must type-check, and misuse must not.
import {
  AuthenticationError,
  RequestError,
  connect,
  connectShared,
  decode,
  encode,
  type Message,
  type Presence,
  type RoomSummary,
} from "../../../tether/web/sdk/index";

export async function app(url: string, token: string): Promise<number> {
  const client = await connect(url, { token, device: "laptop", tokenProvider: async () => token });
  const off = client.on("msg", (m: Message) => console.log(m.room, m.seq, m.body, m.editedAt));
  client.addEventListener("typing", (ev) => console.log(ev.detail.users.join(", ")));
  client.on("reconnecting", ({ attempt, delay, code }) => console.log(attempt, delay, code));
  client.on("closed", (why) => console.log(why.code, why.reconnect));
  const room = await client.createRoom("trip", { kind: "private", members: ["bob"] });
  const sent = await client.send(room.id, { text: "hi" }, { cid: "c-1" });
  const page = await client.history(room.id, { before: sent.seq, limit: 20 });
  const rooms: RoomSummary[] = await client.listRooms();
  const states: Presence[] = await client.subscribePresence(["bob"]);
  await client.ack(room.id, { read: sent.seq, wait: false });
  client.typing(room.id);
  const joined = await client.joinCall(room.id);
  joined.participants.forEach((p) => console.log(p.audioMuted, p.tracks.length));
  off();

  const tab = await connectShared(url, { token, mode: "auto" });
  tab.on("sent", (m) => console.log(m.dup));
  await tab.typing(room.id, false);
  console.log(tab.role === "worker" || tab.role === "leader" || tab.role === "follower");
  try {
    await tab.send(room.id, "x");
  } catch (err) {
    if (err instanceof RequestError) console.log(err.code, err.temporary);
    if (err instanceof AuthenticationError) console.log(err.expired);
  }
  decode(encode({ big: 2n ** 60n, bytes: new Uint8Array(2) }));
  // @ts-expect-error: event names are checked
  client.on("message", () => {});
  // @ts-expect-error: send needs a room and a body
  await client.send(room.id);
  return page.messages.length + rooms.length + states.length;
}
