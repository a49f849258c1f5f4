// TypeScript declarations of the tether JavaScript SDK (tether/web/sdk/*.js).
// Hand-written: the SDK is plain ES modules with no build step. The modules are
// msgpack.js, client.js and shared.js; every name below is exported by one of them.

// ---- msgpack.js ------------------------------------------------------------

export class MsgpackError extends Error {}
export interface EncodeOptions {
  /** Containers nested deeper than this are refused (default 64). */
  maxDepth?: number;
}
export interface DecodeOptions {
  /** Containers nested deeper than this are refused (default 64). */
  maxDepth?: number;
  /** An array or map announcing more entries is refused (default 1 000 000). */
  maxItems?: number;
}
/** null/undefined → nil, safe integers and bigint → int, other numbers → float64, string → str,
 * Uint8Array/ArrayBuffer(View) → bin, arrays → array, Map and plain objects → map. */
export function encode(value: unknown, options?: EncodeOptions): Uint8Array;
/** ints beyond 2^53 come back as bigint; maps with only str keys as objects, others as Map. */
export function decode(input: Uint8Array | ArrayBuffer | ArrayBufferView, options?: DecodeOptions): unknown;

// ---- client.js: data ---------------------------------------------------------

/** Integers of the protocol; a bigint only beyond Number.MAX_SAFE_INTEGER. */
export type Int = number;

export interface Welcome {
  session: string;
  user: string;
  name: string;
  device: string;
  heartbeatMs: Int;
  timeoutMs: Int;
  server: string;
  /** At least max_frame_bytes and max_frames_per_s (snake_case keys, as on the wire). */
  limits: Record<string, number>;
  resumed: boolean;
}

export type RoomKind = "public" | "private" | "direct";
export interface Room {
  id: string;
  kind: RoomKind;
  name: string;
  owner: string;
  lastSeq: Int;
  createdAt: Int;
}
export interface RoomSummary extends Room {
  readSeq: Int;
  unread: Int;
}
export interface Member {
  user: string;
  role: "owner" | "member";
  read: Int;
  delivered: Int;
}
export interface Message {
  room: string;
  seq: Int;
  cid: string;
  sender: string;
  /** null exactly when deleted. */
  body: unknown;
  ts: Int;
  editedAt: Int | null;
  deleted: boolean;
}
export interface SendResult {
  room: string;
  seq: Int;
  ts: Int;
  dup: boolean;
  cid: string;
  /** Present when a server plugin changed the body: show this one. */
  body?: unknown;
}
export interface HistoryPage {
  messages: Message[];
  more: boolean;
}
export interface Presence {
  user: string;
  status: "online" | "away" | "offline";
  devices: Int;
  lastSeen: Int | null;
}
export interface ReceiptEntry {
  user: string;
  delivered: Int;
  read: Int;
}
export interface CallTrack {
  id: string;
  participant: string;
  kind: "audio" | "video";
  rids: string[];
  muted: boolean;
}
export interface CallParticipant {
  id: string;
  user: string;
  device: string;
  tracks: CallTrack[];
  audioMuted: boolean;
  videoMuted: boolean;
}
export interface CallJoined {
  call: string;
  participant: string;
  media: "new" | "kept";
  participants: CallParticipant[];
  speaker: string | null;
  iceServers: { urls: string[] }[];
}

// ---- client.js: events -------------------------------------------------------

export interface EventMap {
  /** A message (never twice, in seq order per room; not your own sends on this client). */
  msg: Message;
  "msg.edited": { room: string; seq: Int; body: unknown; editedAt: Int };
  "msg.deleted": { room: string; seq: Int };
  receipts: { room: string; users: ReceiptEntry[] };
  /** The full list of typists (it may include you). */
  typing: { room: string; users: string[] };
  read: { room: string; seq: Int; unread: Int };
  member: { room: string; user: string; action: "joined" | "left" | "invited" | "removed" };
  room: { room: Room; unread: Int };
  presence: Presence;
  recovered: { room: string; complete: boolean; replayed: Int; head: Int; first: Int | null; code: Int | null };
  "call.offer": { room: string; sdp: string; mids: Record<string, string> };
  "call.participant": { room: string; action: "joined" | "left" | "updated"; participant: CallParticipant };
  "call.track": { room: string; action: "added" | "removed"; track: CallTrack };
  "call.speaker": { room: string; participant: string | null };
  "call.restart": { room: string; reason: string };
  "call.ended": { room: string; reason: string };
  /** An `error` frame not tied to a request. */
  "server-error": { code: Int; reason: string; temporary: boolean };
  /** A push this SDK does not know (a newer server). */
  unknown: { type: unknown; data: Record<string, unknown> };
  /** One of your sends was stored (every tab of a shared client gets it). */
  sent: Message & { dup: boolean };
  reconnecting: { attempt: number; delay: number; code: number; reason: string };
  reconnected: { resumed: boolean };
  "resync-failed": { step: "history" | "presence"; room: string | null; error: Error };
  /** The client is closed for good. */
  closed: ConnectionClosed;
}
export type EventType = keyof EventMap;
export const EVENT_TYPES: readonly EventType[];

export interface TypedEventTarget extends EventTarget {
  /** Listen to one event type; returns a function removing the listener. */
  on<K extends EventType>(type: K, listener: (detail: EventMap[K]) => void): () => void;
  addEventListener<K extends EventType>(type: K, listener: (event: CustomEvent<EventMap[K]>) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
}

// ---- client.js: errors ------------------------------------------------------------

export class TetherError extends Error {}
export class ConnectionClosed extends TetherError {
  constructor(code: number, reason: string);
  readonly code: number;
  readonly reason: string;
  /** Whether reconnecting (with backoff) makes sense for this code. */
  readonly reconnect: boolean;
}
export class AuthenticationError extends ConnectionClosed {
  /** True after 3006 TOKEN_EXPIRED: a fresh token would do. */
  readonly expired: boolean;
}
export class RequestInterrupted extends ConnectionClosed {
  constructor(code: number, reason: string, request: string);
  /** The frame type (or, from a shared client, the method) that was cut. */
  readonly request: string;
}
export class RequestError extends TetherError {
  constructor(code: number, reason: string, temporary: boolean);
  readonly code: number;
  readonly reason: string;
  readonly temporary: boolean;
}
export class MalformedReply extends TetherError {}

// ---- client.js: the client -------------------------------------------------------

export interface ClientOptions {
  /** The JWT (or `dev:<user>` on a server started with --dev). */
  token?: string;
  /** Called for the first token when `token` is absent, and after 3006 TOKEN_EXPIRED. */
  tokenProvider?: () => string | Promise<string>;
  /** A stable id of this device/browser profile. */
  device?: string;
  /** Default "tether-js/0.1". */
  clientName?: string;
  /** Default true. */
  reconnect?: boolean;
  /** Default 500. */
  backoffBaseMs?: number;
  /** Default 30000. */
  backoffCapMs?: number;
  /** Default null: forever. */
  maxReconnectAttempts?: number | null;
  /** Default 10000. */
  connectTimeoutMs?: number;
  /** Requests waiting for an answer or a connection (default 1000); beyond, requests reject. */
  maxPending?: number;
  /** Default globalThis.WebSocket. */
  WebSocket?: typeof WebSocket;
  /** Resume state from snapshot() of an earlier client. */
  restore?: Snapshot;
}

export interface Snapshot {
  session?: string;
  device?: string;
  rooms: Record<string, number>;
}

/** The calls both TetherClient and SharedClient offer. */
export interface TetherApi {
  request(type: string, fields?: Record<string, unknown>): Promise<Record<string, unknown>>;
  subscribePresence(users: string[]): Promise<Presence[]>;
  unsubscribePresence(users: string[]): Promise<void>;
  setIdle(idle: boolean): Promise<void>;
  createRoom(name: string, options?: { kind?: "public" | "private"; members?: string[] }): Promise<Room>;
  joinRoom(roomId: string): Promise<Room>;
  leaveRoom(roomId: string): Promise<void>;
  invite(roomId: string, user: string): Promise<void>;
  removeMember(roomId: string, user: string): Promise<void>;
  listRooms(): Promise<RoomSummary[]>;
  members(roomId: string): Promise<Member[]>;
  openDm(user: string): Promise<Room>;
  send(roomId: string, body: unknown, options?: { cid?: string; retryTemporary?: number }): Promise<SendResult>;
  edit(roomId: string, seq: Int, body: unknown): Promise<Int>;
  delete(roomId: string, seq: Int): Promise<void>;
  history(roomId: string, options?: { before?: Int; after?: Int; limit?: number }): Promise<HistoryPage>;
  ack(roomId: string, options: { delivered?: Int; read?: Int; wait?: boolean }): Promise<void>;
  joinCall(roomId: string): Promise<CallJoined>;
  leaveCall(roomId: string): Promise<void>;
  publishCall(roomId: string, sdp: string): Promise<{ sdp: string; tracks: CallTrack[] }>;
  answerCall(roomId: string, sdp: string): Promise<void>;
  muteCall(roomId: string, kind: "audio" | "video", muted: boolean): Promise<void>;
  restartCall(roomId: string): Promise<void>;
  bye(): Promise<void>;
}

export class TetherClient extends EventTarget implements TetherApi, TypedEventTarget {
  constructor(url: string, options?: ClientOptions);
  readonly url: string;
  /** The latest welcome (null before the first). */
  welcome: Welcome | null;
  readonly user: string | null;
  readonly connected: boolean;
  /** null until closed for good, then why. */
  readonly closed: ConnectionClosed | null;
  on<K extends EventType>(type: K, listener: (detail: EventMap[K]) => void): () => void;
  addEventListener<K extends EventType>(type: K, listener: (event: CustomEvent<EventMap[K]>) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  /** Open the first connection (not retried); resolves with the welcome. */
  open(): Promise<Welcome>;
  snapshot(): Snapshot;
  close(): void;
  /** Fire and forget; dropped while reconnecting. */
  typing(roomId: string, typing?: boolean): void;
  ping(): void;
  sendCallIce(roomId: string, pc: "pub" | "sub", candidate: { candidate?: string | null; sdpMid?: string | null; sdpMLineIndex?: number | null } | null): void;
  setCallQuality(roomId: string, track: string, width: number, height: number): void;
  request(type: string, fields?: Record<string, unknown>): Promise<Record<string, unknown>>;
  subscribePresence(users: string[]): Promise<Presence[]>;
  unsubscribePresence(users: string[]): Promise<void>;
  setIdle(idle: boolean): Promise<void>;
  createRoom(name: string, options?: { kind?: "public" | "private"; members?: string[] }): Promise<Room>;
  joinRoom(roomId: string): Promise<Room>;
  leaveRoom(roomId: string): Promise<void>;
  invite(roomId: string, user: string): Promise<void>;
  removeMember(roomId: string, user: string): Promise<void>;
  listRooms(): Promise<RoomSummary[]>;
  members(roomId: string): Promise<Member[]>;
  openDm(user: string): Promise<Room>;
  send(roomId: string, body: unknown, options?: { cid?: string; retryTemporary?: number }): Promise<SendResult>;
  edit(roomId: string, seq: Int, body: unknown): Promise<Int>;
  delete(roomId: string, seq: Int): Promise<void>;
  history(roomId: string, options?: { before?: Int; after?: Int; limit?: number }): Promise<HistoryPage>;
  ack(roomId: string, options: { delivered?: Int; read?: Int; wait?: boolean }): Promise<void>;
  joinCall(roomId: string): Promise<CallJoined>;
  leaveCall(roomId: string): Promise<void>;
  publishCall(roomId: string, sdp: string): Promise<{ sdp: string; tracks: CallTrack[] }>;
  answerCall(roomId: string, sdp: string): Promise<void>;
  muteCall(roomId: string, kind: "audio" | "video", muted: boolean): Promise<void>;
  restartCall(roomId: string): Promise<void>;
  bye(): Promise<void>;
}

export function connect(url: string, options?: ClientOptions): Promise<TetherClient>;
export function newCid(): string;
export function shouldReconnect(code: number): boolean;
export function reconnectDelay(attempt: number, baseMs: number, capMs: number, code?: number | null, random?: () => number): number;
export const SUBPROTOCOL: "tether.v1";
export const CLIENT_NAME: string;

// ---- shared.js ---------------------------------------------------------------------

export interface SharedOptions extends Omit<ClientOptions, "restore"> {
  /** "auto" (default): a SharedWorker where available, else leader election among tabs. */
  mode?: "auto" | "worker" | "leader";
  /** The URL of shared.js for the worker (default: the module's own URL). */
  workerUrl?: string;
  /** BroadcastChannel and lock name (default "tether:" + url). */
  channel?: string;
  /** A Web Locks implementation (default navigator.locks; null: heartbeat election). */
  locks?: LockManager | null;
  /** The SharedWorker class (default globalThis.SharedWorker). */
  SharedWorker?: new (url: string | URL, options?: WorkerOptions) => { port: MessagePort };
}

/** A tab's handle on the browser's shared connection: the same calls and events as TetherClient. */
export class SharedClient extends EventTarget implements TetherApi, TypedEventTarget {
  /** "worker": a SharedWorker holds the connection; "leader": this tab does; "follower": another tab does. */
  readonly role: "worker" | "leader" | "follower";
  readonly tab: string;
  welcome: Welcome | null;
  readonly user: string | null;
  readonly connected: boolean;
  closed: ConnectionClosed | null;
  on<K extends EventType>(type: K, listener: (detail: EventMap[K]) => void): () => void;
  addEventListener<K extends EventType>(type: K, listener: (event: CustomEvent<EventMap[K]>) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  /** This tab leaves; the connection stays for the other tabs. */
  close(): void;
  typing(roomId: string, typing?: boolean): Promise<void>;
  ping(): Promise<void>;
  sendCallIce(roomId: string, pc: "pub" | "sub", candidate: { candidate?: string | null; sdpMid?: string | null; sdpMLineIndex?: number | null } | null): Promise<void>;
  setCallQuality(roomId: string, track: string, width: number, height: number): Promise<void>;
  request(type: string, fields?: Record<string, unknown>): Promise<Record<string, unknown>>;
  subscribePresence(users: string[]): Promise<Presence[]>;
  unsubscribePresence(users: string[]): Promise<void>;
  setIdle(idle: boolean): Promise<void>;
  createRoom(name: string, options?: { kind?: "public" | "private"; members?: string[] }): Promise<Room>;
  joinRoom(roomId: string): Promise<Room>;
  leaveRoom(roomId: string): Promise<void>;
  invite(roomId: string, user: string): Promise<void>;
  removeMember(roomId: string, user: string): Promise<void>;
  listRooms(): Promise<RoomSummary[]>;
  members(roomId: string): Promise<Member[]>;
  openDm(user: string): Promise<Room>;
  send(roomId: string, body: unknown, options?: { cid?: string; retryTemporary?: number }): Promise<SendResult>;
  edit(roomId: string, seq: Int, body: unknown): Promise<Int>;
  delete(roomId: string, seq: Int): Promise<void>;
  history(roomId: string, options?: { before?: Int; after?: Int; limit?: number }): Promise<HistoryPage>;
  ack(roomId: string, options: { delivered?: Int; read?: Int; wait?: boolean }): Promise<void>;
  joinCall(roomId: string): Promise<CallJoined>;
  leaveCall(roomId: string): Promise<void>;
  publishCall(roomId: string, sdp: string): Promise<{ sdp: string; tracks: CallTrack[] }>;
  answerCall(roomId: string, sdp: string): Promise<void>;
  muteCall(roomId: string, kind: "audio" | "video", muted: boolean): Promise<void>;
  restartCall(roomId: string): Promise<void>;
  bye(): Promise<void>;
}

export function connectShared(url: string, options?: SharedOptions): Promise<SharedClient>;

/** Serve the tabs connecting to a SharedWorker scope (what shared.js does as the worker's script). */
export function serveTabs(scope: EventTarget, extra?: { WebSocket?: typeof WebSocket }): { stop(): void };
