// Hand-written types of scaled-sockets.js (wire protocol v1, docs/protocol.md).

/** Any JSON value carried in `data` fields. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Protocol error codes, plus `closed` (the client was closed). */
export type ErrorCode =
  | "bad_request" | "unauthorized" | "forbidden" | "not_found" | "limit_exceeded"
  | "rate_limited" | "timeout" | "unavailable" | "internal" | "closed";

export declare const ERROR_CODES: readonly ErrorCode[];

/** What every failed call rejects with. */
export declare class ScaledSocketsError extends Error {
  constructor(code: ErrorCode | string, message?: string, details?: unknown);
  readonly name: "ScaledSocketsError";
  readonly code: ErrorCode | string;
  readonly details?: unknown;
}

export type ConnectionState = "connecting" | "connected" | "disconnected";

export interface Welcome {
  type: "welcome";
  session: string;
  client: string;
  instance: string;
  user: string | null;
  ping_interval: number;
  resumed: boolean;
}

export interface MessageFrame {
  type: "message";
  channel: string;
  data: Json;
  offset: number;
  epoch: string;
}

export interface TellFrame {
  type: "tell";
  event: string;
  data: Json;
  core?: string;
}

export interface AskFrame {
  type: "ask";
  id: number;
  event: string;
  data: Json;
  core?: string;
}

export interface LeftFrame {
  type: "left";
  core: string;
  reason: string;
  rejoin: boolean;
}

export interface DisconnectFrame {
  type: "disconnect";
  code: number;
  reason: string;
  reconnect: boolean;
}

export interface SubscribedInfo {
  channel: string;
  /** Offset of the channel's latest publication. */
  offset: number;
  epoch: string;
  /** false: missed messages could not be replayed; reload the channel's state. */
  recovered: boolean;
}

export interface UnsubscribedInfo {
  channel: string;
  reason: string;
}

export interface Position {
  offset: number;
  epoch: string;
}

export interface PresenceEntry {
  client: string;
  user: string | null;
}

/** The minimum of the WebSocket API the client uses (browsers, Node 22, the `ws` package). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: any) => any) | null;
  onmessage: ((ev: { data: any }) => any) | null;
  onclose: ((ev: { code: number; reason: string }) => any) | null;
  onerror: ((ev: any) => any) | null;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface ReconnectOptions {
  /** Base of the backoff (default 200 ms): attempt n waits a random time in [0, min(maxMs, minMs * 2^(n+1))). */
  minMs?: number;
  /** Ceiling of the backoff (default 10,000 ms). */
  maxMs?: number;
}

export interface UrlChoice {
  urls: readonly string[];
  /** Reconnect attempts since the last stable connection. */
  attempt: number;
  /** The URL of the previous attempt, or null. */
  last: string | null;
}

export interface ClientOptions {
  /** A JWT sent in `connect`; omitted: anonymous. */
  token?: string;
  /** Fetches a token before every connection attempt, and before a JWT's `exp` (then reconnects with it). */
  tokenProvider?: () => string | Promise<string>;
  /** How long before `exp` the token is refreshed (default 10,000 ms). */
  tokenRefreshMarginMs?: number;
  /**
   * Transports to use, in order of preference (default ["websocket"]). With "sse" after
   * "websocket", a WebSocket that cannot be opened is followed at once by the HTTP fallback
   * (an event stream down, POSTs up); later reconnects try the WebSocket first again.
   */
  transports?: ReadonlyArray<"websocket" | "sse">;
  /** A fetch function for the "sse" transport; default `globalThis.fetch`. */
  fetch?: typeof globalThis.fetch;
  /** A WebSocket constructor (required in Node 20: the `ws` package); default `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor | (new (url: string) => any);
  /** Backoff bounds, or false to never reconnect. */
  reconnect?: ReconnectOptions | false;
  /**
   * Where the session id is kept between pages (default "local"): "local" is
   * `localStorage`, shared by every tab of the origin, so all tabs join one
   * session; "tab" is `sessionStorage`, one session per tab that a reload
   * resumes; false keeps it in memory only.
   */
  persistSession?: "local" | "tab" | false;
  /** `true` means `persistSession: "tab"` (kept for older code; `persistSession` wins). */
  sessionStorage?: boolean;
  /** A session id to resume. */
  session?: string;
  /** Picks the URL of each connection attempt (default: round robin over the given URLs). */
  chooseUrl?: (choice: UrlChoice) => string;
  /** Default bound on each command's answer, queueing included (default 10,000 ms). */
  timeoutMs?: number;
  /** Bound on one connection attempt up to the welcome (default 10,000 ms). */
  connectTimeoutMs?: number;
  /** Commands and tells held while disconnected (default 256); more reject with `unavailable`. */
  queueLimit?: number;
}

export interface SubscribeOptions {
  /** Resume after the message at this offset (with `epoch`): the missed ones are replayed first. */
  offset?: number;
  epoch?: string;
  timeoutMs?: number;
  /** Called when missed messages could not be replayed (`recovered: false`). */
  onRecoveryFailed?: (info: SubscribedInfo) => void;
  /** Called when the server ended the subscription. */
  onUnsubscribed?: (info: UnsubscribedInfo) => void;
}

export interface SubscriptionEvents {
  subscribed: (info: SubscribedInfo) => void;
  recoveryFailed: (info: SubscribedInfo) => void;
  unsubscribed: (info: UnsubscribedInfo) => void;
}

export declare class Subscription {
  readonly channel: string;
  /** For a subscribe with `{offset, epoch}`: whether every missed message was replayed. */
  readonly recovered: boolean | undefined;
  /** The newest delivered position (or the channel's position when subscribing). */
  readonly position: Position | null;
  readonly active: boolean;
  on<K extends keyof SubscriptionEvents>(type: K, listener: SubscriptionEvents[K]): () => void;
  unsubscribe(): Promise<void>;
}

export type MessageHandler = (data: any, message: MessageFrame) => void | Promise<void>;

export interface ClientEvents {
  state: (state: ConnectionState) => void;
  welcome: (welcome: Welcome) => void;
  tell: (event: string, data: any, frame: TellFrame) => void;
  /** Server errors without an id, failed connects, and errors thrown by handlers. */
  error: (error: ScaledSocketsError) => void;
  subscribed: (info: SubscribedInfo) => void;
  unsubscribed: (info: UnsubscribedInfo) => void;
  left: (frame: LeftFrame) => void;
  /** A core joined before a reconnect was joined again on the new connection. */
  rejoined: (core: string, data: any) => void;
  message: (channel: string, data: any, frame: MessageFrame) => void;
  disconnect: (frame: DisconnectFrame) => void;
  disconnected: (info: { code: number; reason: string }) => void;
  /** The client stopped for good: null after close(), else the fatal error. */
  closed: (error: ScaledSocketsError | null) => void;
}

export interface CommandOptions {
  timeoutMs?: number;
}

export interface CoreOptions extends CommandOptions {
  core?: string;
}

export declare class Client {
  constructor(url: string | readonly string[], options?: ClientOptions);
  readonly state: ConnectionState;
  readonly welcome: Welcome | null;
  readonly session: string | null;
  /** The transport of the current connection, or null while disconnected. */
  readonly transport: "websocket" | "sse" | null;
  on<K extends keyof ClientEvents>(type: K, listener: ClientEvents[K]): () => void;
  off<K extends keyof ClientEvents>(type: K, listener: ClientEvents[K]): void;
  connect(): Promise<Welcome>;
  subscribe(channel: string, handler: MessageHandler, options?: SubscribeOptions): Promise<Subscription>;
  publish(channel: string, data: unknown, options?: CommandOptions): Promise<Position>;
  ask<T = any>(event: string, data?: unknown, options?: CoreOptions): Promise<T>;
  tell(event: string, data?: unknown, options?: { core?: string }): void;
  onAsk(event: string, handler: (data: any, frame: AskFrame) => unknown): () => void;
  join<T = any>(core: string, data?: unknown, options?: CommandOptions): Promise<T>;
  leave(core: string, options?: CommandOptions): Promise<void>;
  presence(channel: string, options?: CommandOptions): Promise<{ clients: PresenceEntry[] }>;
  close(): Promise<void>;
}

/** The WebSocket endpoint (`ws(s)://…/ws`) for a server base URL. */
export declare function socketUrl(base: string): string;
/** The HTTP fallback's base URL (http(s)://host[/prefix]) for a server base URL. */
export declare function httpBase(base: string): string;

/** A reconnect delay for attempt `attempt` (full jitter). */
export declare function backoffDelay(attempt: number, minMs: number, maxMs: number): number;
/** Longest wait before reconnecting after a drain's `disconnect` push (ms). */
export declare const DRAIN_SPREAD_MS: number;
/** Delay before reconnecting after a drain: random in [0, DRAIN_SPREAD_MS). */
export declare function drainDelay(): number;
