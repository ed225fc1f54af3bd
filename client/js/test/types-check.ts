// Type-checked (never run) use of the whole public API: `npm run typecheck`.
import {
  Client, ScaledSocketsError, Subscription, ERROR_CODES, socketUrl, httpBase, backoffDelay,
  type Welcome, type ConnectionState, type Position, type SubscribedInfo, type ErrorCode,
} from "../scaled-sockets.js";

export async function useEverything(WS: new (url: string) => any): Promise<void> {
  const c = new Client(["http://127.0.0.1:8081", "ws://127.0.0.1:8082"], {
    token: "jwt",
    tokenProvider: async () => "jwt",
    tokenRefreshMarginMs: 5000,
    transports: ["websocket", "sse"],
    WebSocket: WS,
    reconnect: { minMs: 100, maxMs: 5000 },
    sessionStorage: true,
    session: "s",
    chooseUrl: ({ urls, attempt, last }) => urls[attempt % urls.length] ?? last ?? urls[0],
    timeoutMs: 5000,
    connectTimeoutMs: 5000,
    queueLimit: 100,
    fetch: globalThis.fetch,
  });
  new Client("https://example.com", { reconnect: false });
  new Client("https://example.com", { persistSession: "tab" });
  new Client("https://example.com", { persistSession: false });
  // @ts-expect-error: only "local", "tab" or false
  new Client("https://example.com", { persistSession: "cookie" });
  const transport: "websocket" | "sse" | null = c.transport;
  void [transport, httpBase("ws://127.0.0.1:8081/ws").length];

  const offState = c.on("state", (s: ConnectionState) => void s);
  offState();
  c.on("welcome", (w: Welcome) => void w.session);
  c.on("tell", (event: string, data: unknown, frame) => void [event, data, frame.core]);
  c.on("error", (e: ScaledSocketsError) => void e.code);
  c.on("subscribed", (i: SubscribedInfo) => void i.recovered);
  c.on("unsubscribed", (i) => void i.reason);
  c.on("left", (f) => void f.rejoin);
  c.on("rejoined", (core, data) => void [core.length, data]);
  c.on("message", (channel: string, data: unknown, frame) => void [channel, data, frame.offset]);
  c.on("disconnect", (f) => void f.reconnect);
  c.on("disconnected", ({ code, reason }) => void [code, reason]);
  const onClosed = (e: ScaledSocketsError | null) => void e;
  c.on("closed", onClosed);
  c.off("closed", onClosed);

  const welcome: Welcome = await c.connect();
  const state: ConnectionState = c.state;
  const session: string | null = c.session;
  void [welcome.client, welcome.instance, welcome.user, welcome.resumed, welcome.ping_interval, state, session, c.welcome];

  const sub: Subscription = await c.subscribe("chat:lobby", (data, message) => {
    void [data, message.channel, message.epoch];
  }, {
    offset: 3, epoch: "e", timeoutMs: 1000,
    onRecoveryFailed: (i) => void i.offset,
    onUnsubscribed: (i) => void i.channel,
  });
  const pos: Position | null = sub.position;
  const recovered: boolean | undefined = sub.recovered;
  void [pos, recovered, sub.channel, sub.active];
  sub.on("recoveryFailed", (i) => void i.epoch)();
  sub.on("subscribed", (i) => void i.recovered);
  sub.on("unsubscribed", (i) => void i.reason);

  const { offset, epoch } = await c.publish("chat:lobby", { text: "hi" }, { timeoutMs: 1000 });
  void [offset, epoch];
  const answer = await c.ask<{ x: number }>("echo", { x: 1 }, { core: undefined, timeoutMs: 5000 });
  void answer.x;
  c.tell("echo", { x: 1 });
  c.tell("incr", null, { core: "match-42" });
  const offAsk = c.onAsk("confirm", async (data, frame) => ({ ok: data !== null, id: frame.id }));
  offAsk();
  await c.join("match-42", {});
  await c.leave("match-42", { timeoutMs: 1000 });
  const { clients } = await c.presence("chat:lobby");
  void clients.map((e) => [e.client, e.user]);
  try {
    await c.ask("nope");
  } catch (e) {
    if (e instanceof ScaledSocketsError) {
      const code: ErrorCode | string = e.code;
      void [code, e.message];
    }
  }
  await sub.unsubscribe();
  await c.close();
  void [ERROR_CODES, socketUrl("http://x"), backoffDelay(1, 100, 1000)];
}
