// Scaled Sockets JavaScript client: one ES module, no dependencies, for
// browsers and Node >= 20. Wire protocol v1 (docs/protocol.md).
//
// One `Client` owns at most one connection at a time. It answers pings,
// reconnects with exponential backoff and full jitter (within a second after
// a `disconnect` push with `reconnect: true`), resumes its session, and
// re-subscribes every channel from the last message it delivered, so the
// server replays what was missed; duplicates are dropped by offset.
//
// Everything runs on the event loop: no locks, but every callback that can
// fire after a connection ended checks that its connection is still the
// current one (`this._conn === conn`) before touching shared state.

/** Error codes of the protocol, plus `closed` (the client was closed). */
export const ERROR_CODES = Object.freeze([
  "bad_request", "unauthorized", "forbidden", "not_found", "limit_exceeded",
  "rate_limited", "timeout", "unavailable", "internal", "closed",
]);
const WIRE_CODES = new Set(ERROR_CODES.filter((c) => c !== "closed"));

/** Close codes after which reconnecting would only repeat the failure. */
const FATAL_CLOSE_CODES = new Set([4000, 1003, 1009]);
/** A connection that stayed up this long resets the backoff. */
const STABLE_AFTER_MS = 5000;
/** Bound on the closing handshake of `close()`. */
const CLOSE_WAIT_MS = 2000;
/** Bound on waiting for in-flight commands before a token-refresh reconnect. */
const REFRESH_QUIESCE_MS = 5000;
/** The longest delay `setTimeout` accepts. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** An error with a protocol error code (`error.code`). */
export class ScaledSocketsError extends Error {
  constructor(code, message, details) {
    super(message || code);
    this.name = "ScaledSocketsError";
    this.code = code;
    if (details !== undefined) this.details = details;
  }
}

function fail(code, message) {
  return new ScaledSocketsError(code, message);
}

// ---------------------------------------------------------------- URLs

/** The WebSocket endpoint for a server base URL (`http(s)://`, `ws(s)://`, or relative in a page). */
export function socketUrl(base) {
  const origin = globalThis.location && globalThis.location.href;
  let url;
  try {
    url = origin ? new URL(base, origin) : new URL(base);
  } catch {
    throw fail("bad_request", `invalid server URL ${JSON.stringify(base)}`);
  }
  const schemes = { "http:": "ws:", "https:": "wss:", "ws:": "ws:", "wss:": "wss:" };
  if (!schemes[url.protocol]) {
    throw fail("bad_request", `unsupported URL scheme ${url.protocol} (use http(s):// or ws(s)://)`);
  }
  url.protocol = schemes[url.protocol];
  if (!url.pathname.endsWith("/ws")) {
    url.pathname = url.pathname.replace(/\/+$/, "") + "/ws";
  }
  url.hash = "";
  return url.toString();
}

/** The HTTP fallback's base (`http(s)://host/prefix`, no trailing `/ws`) for a server base URL. */
export function httpBase(base) {
  const url = new URL(socketUrl(base));
  url.protocol = url.protocol === "wss:" ? "https:" : "http:";
  url.pathname = url.pathname.replace(/\/ws$/, "");
  url.search = "";
  return url.toString().replace(/\/+$/, "");
}

// ---------------------------------------------------------------- transports

// A transport carries protocol frames (one JSON text each). `open(baseUrl,
// hooks)` starts a connection and returns a handle `{ send(text) -> bool,
// close(code, reason, waitMs) }`; it calls `hooks.onOpen()`, then
// `hooks.onText(text)` per frame, and `hooks.onClose(code, reason)` exactly
// once at the end (also after `close`, at the latest after `waitMs`). The
// client speaks the same protocol over every transport: the HTTP fallback
// (`sse`) is one more entry in TRANSPORTS.

class WebSocketTransport {
  constructor(options) {
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    if (typeof this.WebSocket !== "function") {
      throw fail("bad_request",
        "no WebSocket implementation: pass one as options.WebSocket (in Node 20: the `ws` package)");
    }
  }

  open(baseUrl, hooks) {
    const ws = new this.WebSocket(socketUrl(baseUrl));
    let ended = false;
    let timer = null;
    const end = (code, reason) => {
      if (ended) return;
      ended = true;
      if (timer) clearTimeout(timer);
      ws.onopen = ws.onmessage = ws.onclose = null;
      // Keep an error listener: some implementations throw on unhandled errors.
      ws.onerror = () => {};
      hooks.onClose(code, reason);
    };
    ws.onopen = () => !ended && hooks.onOpen();
    ws.onmessage = (ev) => {
      if (ended) return;
      if (typeof ev.data === "string") hooks.onText(ev.data);
      else hooks.onBinary();
    };
    ws.onerror = () => {}; // a close event follows
    ws.onclose = (ev) => end(ev.code || 1006, ev.reason || "");
    return {
      send(text) {
        if (ended || ws.readyState !== 1) return false;
        ws.send(text);
        return true;
      },
      close(code, reason, waitMs) {
        if (ended) return;
        try {
          ws.close(code, reason);
        } catch {
          // already closing
        }
        if (waitMs > 0) timer = setTimeout(() => end(code, reason), waitMs);
        else end(code, reason);
      },
    };
  }
}

/** Frames per POST (the server's limit). */
const SSE_MAX_FRAMES = 64;
/** Attempts of one POST (network errors, 429, 502-504) before the connection is given up. */
const SSE_POST_TRIES = 6;

// The HTTP fallback: server frames come as an event stream (`GET /sse`, read
// with fetch rather than EventSource, which would reconnect by itself and
// fight the client's own resume); client frames go up in POSTs
// (`POST /sse/send`) that any instance may receive. POSTs leave one at a
// time, numbered by `seq`; a retried POST keeps its number, so the server
// applies it once however many times it arrives.
class SseTransport {
  constructor(options) {
    this.fetch = options.fetch || globalThis.fetch;
    if (typeof this.fetch !== "function") {
      throw fail("bad_request", "no fetch implementation: pass one as options.fetch");
    }
  }

  open(baseUrl, hooks) {
    const base = httpBase(baseUrl);
    const doFetch = this.fetch;
    const abort = new AbortController();
    let ended = false;
    let started = false;
    let ids = null; // { session, client } from the welcome
    let seq = 0;
    let queue = []; // frames waiting for a POST
    let posting = false;
    let disconnect = null; // the last `disconnect` frame
    let refused = null; // the handshake's `error` code
    let timer = null;
    const end = (code, reason) => {
      if (ended) return;
      ended = true;
      if (timer) clearTimeout(timer);
      try {
        abort.abort();
      } catch {
        // already aborted
      }
      hooks.onClose(code, reason);
    };
    const onEvent = (data) => {
      if (ended) return;
      if (!ids || data.includes('"disconnect"') || data.includes('"error"')) {
        let frame = null;
        try {
          frame = JSON.parse(data);
        } catch {
          // handed on as it is: the client reports undecodable frames
        }
        if (frame && frame.type === "welcome" && !ids) {
          ids = { session: frame.session, client: frame.client };
          hooks.onText(data);
          flush();
          return;
        }
        if (frame && frame.type === "disconnect") disconnect = frame;
        if (frame && frame.type === "error" && !ids) refused = frame.code;
      }
      hooks.onText(data);
    };
    const read = async (res) => {
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      let data = [];
      for (;;) {
        const { value, done } = await reader.read();
        if (done || ended) break;
        buf += decoder.decode(value, { stream: true });
        let nl;
        while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + (buf[nl] === "\r" && buf[nl + 1] === "\n" ? 2 : 1));
          if (line === "") {
            if (data.length) onEvent(data.join("\n"));
            data = [];
          } else if (line.startsWith("data:")) {
            data.push(line.slice(line[5] === " " ? 6 : 5));
          } // comments (keep-alives) and other fields are ignored
        }
      }
    };
    const stream = async (connectText) => {
      let res;
      try {
        res = await doFetch(`${base}/sse?connect=${encodeURIComponent(connectText)}`, {
          headers: { accept: "text/event-stream" },
          cache: "no-store",
          signal: abort.signal,
        });
      } catch {
        end(1006, "the event stream could not be opened");
        return;
      }
      if (!res.ok || !res.body) {
        // 400: a connect the server refuses (not retried); 503: draining.
        end(res.status === 400 ? 4000 : 1006, `GET /sse answered ${res.status}`);
        return;
      }
      try {
        await read(res);
      } catch {
        // aborted or cut: the end below says so
      }
      if (disconnect) end(disconnect.code, disconnect.reason || "");
      else if (refused === "unauthorized") end(4001, "unauthorized");
      else end(1006, "the event stream ended");
    };
    const post = async (body) => {
      for (let attempt = 0; attempt < SSE_POST_TRIES && !ended; attempt++) {
        let status = 0;
        try {
          const res = await doFetch(`${base}/sse/send`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body,
            signal: abort.signal,
          });
          status = res.status;
          try {
            await res.arrayBuffer();
          } catch {
            // the body does not matter
          }
        } catch {
          status = 0; // network error: the same seq again is safe
        }
        if (status === 204) return true;
        if (status === 404) {
          end(1006, "the event stream is gone");
          return false;
        }
        if (status === 400) {
          end(4000, "POST /sse/send refused the frames");
          return false;
        }
        await new Promise((r) => setTimeout(r, Math.min(100 * 2 ** attempt, 2000)));
      }
      end(1006, "frames could not be sent");
      return false;
    };
    const flush = async () => {
      if (posting || !ids || ended) return;
      posting = true;
      while (queue.length && !ended) {
        const frames = queue.slice(0, SSE_MAX_FRAMES);
        queue = queue.slice(frames.length);
        seq += 1;
        const body = `{"session":${JSON.stringify(ids.session)},"client":${JSON.stringify(ids.client)},"seq":${seq},"frames":[${frames.join(",")}]}`;
        if (!(await post(body))) break;
      }
      posting = false;
    };
    queueMicrotask(() => !ended && hooks.onOpen());
    return {
      send(text) {
        if (ended) return false;
        if (!started) {
          // The first frame is `connect`: it opens the stream.
          started = true;
          stream(text);
          return true;
        }
        // The stream itself is the sign of life: pings need no answer.
        if (text === '{"type":"pong"}') return true;
        queue.push(text);
        queueMicrotask(flush);
        return true;
      },
      close(code, reason, waitMs) {
        if (ended) return;
        if (waitMs > 0 && (posting || queue.length)) {
          // Let the frames already sent go out, within the wait.
          timer = setTimeout(() => end(code, reason), waitMs);
          const check = () => (!posting && !queue.length ? end(code, reason) : !ended && setTimeout(check, 10));
          check();
        } else end(code, reason);
      },
    };
  }
}

const TRANSPORTS = { websocket: WebSocketTransport, sse: SseTransport };
const KNOWN_TRANSPORTS = new Set(["websocket", "sse"]);

// ---------------------------------------------------------------- helpers

/** Reconnect delay: full jitter below a ceiling that doubles per failure. */
export function backoffDelay(attempt, minMs, maxMs) {
  const cap = Math.min(maxMs, minMs * 2 ** Math.min(attempt + 1, 30));
  return Math.floor(Math.random() * Math.max(cap, 0));
}

/** Longest wait before reconnecting after a drain's `disconnect` push. */
export const DRAIN_SPREAD_MS = 1000;

/**
 * Delay before reconnecting after a drain: random in [0, DRAIN_SPREAD_MS),
 * so the clients of a draining instance do not all reach the others at once.
 */
export function drainDelay() {
  return Math.floor(Math.random() * DRAIN_SPREAD_MS);
}

/** `exp` (ms since the epoch) of a JWT, or null when it is not a readable JWT. */
function jwtExpiry(token) {
  if (typeof token !== "string") return null;
  const part = token.split(".")[1];
  if (!part) return null;
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const json = typeof atob === "function"
      ? atob(b64 + "===".slice((b64.length + 3) % 4))
      : null;
    const exp = json && JSON.parse(json).exp;
    return typeof exp === "number" ? exp * 1000 : null;
  } catch {
    return null;
  }
}

/** JSON text of a frame; data that JSON cannot carry (BigInt, cycles) is a `bad_request`. */
function encode(frame) {
  try {
    return JSON.stringify(frame);
  } catch (e) {
    throw fail("bad_request", `data cannot be sent as JSON: ${e && e.message ? e.message : e}`);
  }
}

function checkName(what, name) {
  if (typeof name !== "string" || name.length === 0) {
    throw fail("bad_request", `${what} must be a non-empty string`);
  }
}

/** Where the session id is kept: "local" (shared by the tabs of an origin), "tab", or none. */
function storage(where) {
  try {
    if (where === "local") return globalThis.localStorage || null;
    if (where === "tab") return globalThis.sessionStorage || null;
    return null;
  } catch {
    return null; // access denied (e.g. sandboxed frame, storage disabled)
  }
}

function persistMode(options) {
  const p = options.persistSession;
  if (p === undefined) return options.sessionStorage === true ? "tab" : "local";
  if (p === false || p === "local" || p === "tab") return p;
  throw fail("bad_request", `persistSession must be "local", "tab" or false, not ${JSON.stringify(p)}`);
}

// ---------------------------------------------------------------- subscriptions

/** One `subscribe` call's handle. Created by `Client.subscribe`. */
export class Subscription {
  constructor(client, channel, handler, opts) {
    this.channel = channel;
    /** Whether the requested position was recovered (`undefined` without one). */
    this.recovered = undefined;
    this._client = client;
    this._handler = handler;
    this._listeners = { subscribed: new Set(), recoveryFailed: new Set(), unsubscribed: new Set() };
    if (opts.onRecoveryFailed) this._listeners.recoveryFailed.add(opts.onRecoveryFailed);
    if (opts.onUnsubscribed) this._listeners.unsubscribed.add(opts.onUnsubscribed);
    this._active = true;
  }

  /** `{offset, epoch}` of the newest message delivered (or of the channel when subscribing). */
  get position() {
    const ch = this._client._channels.get(this.channel);
    return ch && ch.last ? { offset: ch.last.offset, epoch: ch.last.epoch } : null;
  }

  /** Whether messages are still delivered to this subscription. */
  get active() {
    return this._active;
  }

  /**
   * Listens to "subscribed" (every (re)subscription: `{channel, offset, epoch, recovered}`),
   * "recoveryFailed" (missed messages could not be replayed: reload the channel's state) or
   * "unsubscribed" (the server ended the subscription: `{channel, reason}`). Returns a remover.
   */
  on(type, listener) {
    const set = this._listeners[type];
    if (!set) throw fail("bad_request", `unknown subscription event ${JSON.stringify(type)}`);
    set.add(listener);
    return () => set.delete(listener);
  }

  /** Stops delivery; unsubscribes on the server when it was the channel's last subscription. */
  unsubscribe() {
    if (!this._active) return Promise.resolve();
    this._active = false;
    return this._client._unsubscribe(this);
  }

  _emit(type, value) {
    for (const l of [...this._listeners[type]]) this._client._guard(() => l(value));
  }
}

// ---------------------------------------------------------------- the client

/**
 * A client of a Scaled Sockets cluster. See README.md for the options and
 * the behaviour on disconnects.
 */
export class Client {
  constructor(url, options = {}) {
    const urls = Array.isArray(url) ? [...url] : [url];
    if (urls.length === 0) throw fail("bad_request", "no server URL given");
    for (const u of urls) socketUrl(u); // validates
    this._urls = urls;
    this._urlIndex = 0;
    const rc = options.reconnect === false ? { enabled: false } : { enabled: true, ...options.reconnect };
    this._opts = {
      token: options.token,
      tokenProvider: options.tokenProvider,
      tokenRefreshMarginMs: options.tokenRefreshMarginMs ?? 10000,
      chooseUrl: options.chooseUrl,
      reconnect: rc.enabled,
      minMs: rc.minMs ?? 200,
      maxMs: rc.maxMs ?? 10000,
      timeoutMs: options.timeoutMs ?? 10000,
      connectTimeoutMs: options.connectTimeoutMs ?? 10000,
      queueLimit: options.queueLimit ?? 256,
      persistSession: persistMode(options),
    };
    const names = options.transports ?? ["websocket"];
    for (const n of names) {
      if (!KNOWN_TRANSPORTS.has(n)) throw fail("bad_request", `unknown transport ${JSON.stringify(n)}`);
    }
    // In order of preference; one that cannot be built here (no WebSocket
    // implementation) is skipped when another one remains.
    this._transports = [];
    let why = null;
    for (const n of [...new Set(names)]) {
      try {
        this._transports.push({ name: n, impl: new TRANSPORTS[n](options) });
      } catch (e) {
        why = why ?? e;
      }
    }
    if (this._transports.length === 0) throw why ?? fail("bad_request", "no transport given");
    // The transport of the next attempt: the first one, except right after it
    // could not be opened, when the next one is tried at once.
    this._transportIndex = 0;

    this._listeners = new Map();
    this._askHandlers = new Map();
    this._state = "disconnected";
    this._closed = null; // the error (or closed marker) once stopped for good
    this._running = false; // connecting or connected, reconnecting on loss
    this._conn = null;
    this._welcome = null;
    this._session = options.session ?? null;
    this._storageKey = "scaled-sockets:session:" + urls.join(",");
    // An explicit `session` wins over the stored one, for this client's
    // first connect.
    this._sessionGiven = this._session !== null;
    if (!this._sessionGiven) this._session = this._readStoredSession();
    this._channels = new Map();
    // Cores joined (core id -> the data of the join), joined again on every
    // new connection: a membership belongs to a connection, not a session.
    this._cores = new Map();
    this._unsubscribing = new Set();
    this._offlineUnsubs = new Set();
    this._queue = [];
    this._attempt = 0; // reconnect attempts since the last stable connection
    this._failures = 0; // failed attempts of the first connect()
    this._everConnected = false;
    this._retryTimer = null;
    this._connectWaiters = [];
    this._nextToken = null;
  }

  // ------------------------------------------------------------ public API

  /** "connecting" | "connected" | "disconnected". */
  get state() {
    return this._state;
  }

  /** The current connection's welcome frame, or null while disconnected. */
  get welcome() {
    return this._conn && this._conn.welcome ? this._conn.welcome : null;
  }

  /** The transport of the current connection ("websocket" or "sse"), or null while disconnected. */
  get transport() {
    return this._conn && this._conn.welcome ? this._conn.transport : null;
  }

  /** The session id (kept across reconnects), or null before the first welcome. */
  get session() {
    return this._session;
  }

  /** Adds a listener; returns a function that removes it. */
  on(type, listener) {
    if (typeof listener !== "function") throw fail("bad_request", "listener must be a function");
    let set = this._listeners.get(type);
    if (!set) this._listeners.set(type, (set = new Set()));
    set.add(listener);
    return () => this.off(type, listener);
  }

  off(type, listener) {
    this._listeners.get(type)?.delete(listener);
  }

  /**
   * Connects (if not already) and resolves with the welcome frame. Transient
   * failures are retried on the next URL; it rejects once every URL has
   * failed once, or at once on a fatal error (e.g. `unauthorized`).
   */
  connect() {
    if (this._closed) return Promise.reject(this._closed);
    const welcome = this.welcome;
    if (welcome) return Promise.resolve(welcome);
    const p = new Promise((resolve, reject) => this._connectWaiters.push({ resolve, reject }));
    if (!this._running) {
      this._running = true;
      this._failures = 0;
      this._attemptConnection();
    }
    return p;
  }

  /**
   * Subscribes `handler(data, message)` to `channel`; resolves with a
   * `Subscription` once the server confirmed it. With `{offset, epoch}` the
   * messages after that position are replayed first (`sub.recovered`).
   */
  subscribe(channel, handler, opts = {}) {
    try {
      checkName("channel", channel);
      if (typeof handler !== "function") throw fail("bad_request", "handler must be a function");
      this._checkOpen();
    } catch (e) {
      return Promise.reject(e);
    }
    const sub = new Subscription(this, channel, handler, opts);
    return new Promise((resolve, reject) => {
      const waiter = { sub, resolve, reject, timer: null };
      let ch = this._channels.get(channel);
      if (ch && ch.state === "active") {
        ch.subs.add(sub);
        resolve(sub);
        return;
      }
      if (!ch) {
        const requested = opts.offset !== undefined || opts.epoch !== undefined
          ? { offset: opts.offset ?? 0, epoch: opts.epoch ?? "", explicit: opts }
          : null;
        ch = {
          name: channel, subs: new Set(), state: "pending", pendingId: null, inConnect: null,
          waiters: [], buffer: [], requested, last: null,
        };
        this._channels.set(channel, ch);
        if (this._ready()) this._sendSubscribe(ch);
      }
      ch.subs.add(sub);
      ch.waiters.push(waiter);
      waiter.timer = setTimeout(() => {
        ch.waiters = ch.waiters.filter((w) => w !== waiter);
        sub._active = false;
        ch.subs.delete(sub);
        if (ch.subs.size === 0 && !this._inFlight(ch) && this._channels.get(channel) === ch) {
          this._channels.delete(channel); // never sent: nothing to undo
        }
        reject(fail("timeout", `subscribe ${channel}: no answer within ${opts.timeoutMs ?? this._opts.timeoutMs} ms`));
      }, Math.min(opts.timeoutMs ?? this._opts.timeoutMs, MAX_TIMER_MS));
    });
  }

  /** Publishes `data` on `channel`; resolves with `{offset, epoch}` of the publication. */
  async publish(channel, data, opts = {}) {
    checkName("channel", channel);
    const reply = await this._request({ type: "publish", channel, data: data ?? null }, opts.timeoutMs);
    return { offset: reply.offset, epoch: reply.epoch };
  }

  /** Asks the server's handler for `event` (or core `opts.core`); resolves with its answer's data. */
  async ask(event, data, opts = {}) {
    checkName("event", event);
    const frame = { type: "ask", event, data: data ?? null };
    if (opts.core !== undefined && opts.core !== null) frame.core = opts.core;
    const reply = await this._request(frame, opts.timeoutMs);
    return reply.data ?? null;
  }

  /**
   * Sends a one-way event. While disconnected it is queued (bounded by
   * `queueLimit`) and sent after reconnecting. Throws `closed` after close(),
   * `unavailable` when the queue is full.
   */
  tell(event, data, opts = {}) {
    checkName("event", event);
    this._checkOpen();
    const frame = { type: "tell", event, data: data ?? null };
    if (opts.core !== undefined && opts.core !== null) frame.core = opts.core;
    const text = encode(frame);
    if (this._ready()) {
      this._conn.handle.send(text);
      return;
    }
    if (this._queue.length >= this._opts.queueLimit) {
      throw fail("unavailable", "disconnected and the send queue is full");
    }
    this._queue.push({ text, tell: true });
  }

  /** Joins core `core`; resolves with the core's answer. */
  async join(core, data, opts = {}) {
    checkName("core", core);
    const reply = await this._request({ type: "join", core, data: data ?? null }, opts.timeoutMs);
    this._cores.set(core, data ?? null);
    return reply.data ?? null;
  }

  /** Leaves core `core`. */
  async leave(core, opts = {}) {
    checkName("core", core);
    this._cores.delete(core);
    await this._request({ type: "leave", core }, opts.timeoutMs);
  }

  /**
   * After a reconnect: joins every core joined before again (the old
   * connection's memberships ended with it). A core that is not reachable
   * yet (its instance died and it is being respawned) is retried with
   * backoff while this connection lasts. Emits "rejoined" (core, reply data).
   */
  _rejoinCores(conn) {
    for (const [core, data] of this._cores) {
      let attempt = 0;
      const tryJoin = () => {
        if (this._conn !== conn || !this._cores.has(core)) return;
        this._request({ type: "join", core, data }).then(
          (reply) => this._emit("rejoined", core, reply.data ?? null),
          (err) => {
            if (this._conn !== conn || !this._cores.has(core)) return;
            const code = err && err.code;
            if (code === "not_found" || code === "unavailable" || code === "timeout") {
              attempt += 1;
              setTimeout(tryJoin, Math.min(250 * 2 ** attempt, 5000));
            } else {
              this._cores.delete(core);
              this._emit("error", err);
            }
          },
        );
      };
      tryJoin();
    }
  }

  /** Resolves with `{clients: [{client, user}]}`: every connection subscribed to `channel`, on any instance. */
  async presence(channel, opts = {}) {
    checkName("channel", channel);
    const reply = await this._request({ type: "presence", channel }, opts.timeoutMs);
    return reply.data ?? { clients: [] };
  }

  /**
   * Answers the server's asks for `event` with `handler(data, frame)`: its
   * result is sent as `reply`, a thrown error as `error` (with `err.code`
   * when it is a protocol code, else `internal`). Returns a remover.
   */
  onAsk(event, handler) {
    checkName("event", event);
    if (typeof handler !== "function") throw fail("bad_request", "handler must be a function");
    this._askHandlers.set(event, handler);
    return () => {
      if (this._askHandlers.get(event) === handler) this._askHandlers.delete(event);
    };
  }

  /**
   * Closes for good (close code 1000). Pending and queued commands reject
   * with `closed`, as do later calls. Resolves once the socket is closed.
   */
  close() {
    if (this._closed) return Promise.resolve();
    const conn = this._conn;
    const done = new Promise((resolve) => {
      if (conn) conn.onEnded = resolve;
      else resolve();
    });
    this._stop(fail("closed", "the client was closed"));
    if (conn) conn.handle.close(1000, "", CLOSE_WAIT_MS);
    return done;
  }

  // ------------------------------------------------------------ events

  _emit(type, ...args) {
    const set = this._listeners.get(type);
    if (!set || set.size === 0) {
      if (type === "error" && args[0] && args[0].code === "internal") console.error(args[0]);
      return;
    }
    for (const l of [...set]) this._guard(() => l(...args), type !== "error");
  }

  /** Runs user code; a throw is reported as an "error" event, never breaks the client. */
  _guard(fn, report = true) {
    try {
      const r = fn();
      if (r && typeof r.catch === "function") r.catch((e) => report && this._userError(e));
    } catch (e) {
      if (report) this._userError(e);
    }
  }

  _userError(e) {
    const err = fail("internal", `a listener or handler threw: ${e && e.message ? e.message : e}`);
    err.cause = e;
    this._emit("error", err);
  }

  _setState(state) {
    if (this._state === state) return;
    this._state = state;
    this._emit("state", state);
  }

  // ------------------------------------------------------------ commands

  _checkOpen() {
    if (this._closed) throw this._closed;
  }

  /** Connected, welcomed, and not quiescing for a token refresh. */
  _ready() {
    return !!(this._conn && this._conn.welcome && !this._conn.quiescing);
  }

  _request(frame, timeoutMs) {
    return new Promise((resolve, reject) => {
      this._checkOpen();
      const limit = timeoutMs ?? this._opts.timeoutMs;
      const req = { frame, resolve, reject, timer: null, conn: null, id: 0 };
      req.timer = setTimeout(() => {
        this._queue = this._queue.filter((q) => q !== req);
        if (req.conn) req.conn.pending.delete(req.id);
        reject(fail("timeout", `${frame.type}: no answer within ${limit} ms`));
      }, Math.min(limit, MAX_TIMER_MS));
      if (this._ready()) {
        this._sendRequest(this._conn, req);
      } else if (this._queue.length >= this._opts.queueLimit) {
        clearTimeout(req.timer);
        reject(fail("unavailable", "disconnected and the send queue is full"));
      } else {
        this._queue.push(req);
      }
    });
  }

  _sendRequest(conn, req) {
    let text;
    try {
      text = encode({ ...req.frame, id: conn.nextId });
    } catch (e) {
      this._settle(req, e);
      return;
    }
    const id = conn.nextId++;
    req.conn = conn;
    req.id = id;
    conn.pending.set(id, { kind: "request", req });
    conn.handle.send(text);
  }

  _settle(req, err, value) {
    clearTimeout(req.timer);
    if (err) req.reject(err);
    else req.resolve(value);
  }

  _flushQueue(conn) {
    const queue = this._queue;
    this._queue = [];
    for (const item of queue) {
      if (item.tell) conn.handle.send(item.text);
      else this._sendRequest(conn, item);
    }
  }

  _sendSubscribe(ch) {
    const conn = this._conn;
    const id = conn.nextId++;
    ch.pendingId = id;
    conn.pending.set(id, { kind: "subscribe", channel: ch.name });
    const frame = { type: "subscribe", id, channel: ch.name };
    if (ch.requested) {
      if (ch.requested.explicit.offset !== undefined) frame.offset = ch.requested.offset;
      if (ch.requested.explicit.epoch !== undefined) frame.epoch = ch.requested.epoch;
    }
    conn.handle.send(JSON.stringify(frame));
  }

  /** Whether the server may be making this pending subscription (so its answer must be awaited). */
  _inFlight(ch) {
    return ch.pendingId !== null || (ch.inConnect != null && ch.inConnect === this._conn);
  }

  _sendUnsubscribe(conn, channel, done) {
    const id = conn.nextId++;
    this._unsubscribing.add(channel);
    conn.pending.set(id, { kind: "unsubscribe", channel, done });
    conn.handle.send(JSON.stringify({ type: "unsubscribe", id, channel }));
  }

  _unsubscribe(sub) {
    const ch = this._channels.get(sub.channel);
    if (!ch || !ch.subs.delete(sub) || ch.subs.size > 0) return Promise.resolve();
    if (ch.state === "pending") {
      if (!this._inFlight(ch)) this._channels.delete(ch.name); // never sent
      return Promise.resolve(); // otherwise undone when the answer arrives
    }
    this._channels.delete(ch.name);
    if (!this._conn || !this._conn.welcome) {
      this._offlineUnsubs.add(ch.name); // undone if the session resumes
      return Promise.resolve();
    }
    return new Promise((resolve) => this._sendUnsubscribe(this._conn, ch.name, resolve));
  }

  // ------------------------------------------------------------ connecting

  _nextUrl() {
    if (this._opts.chooseUrl) {
      return this._opts.chooseUrl({ urls: this._urls, attempt: this._attempt, last: this._lastUrl ?? null });
    }
    const url = this._urls[this._urlIndex % this._urls.length];
    this._urlIndex = (this._urlIndex + 1) % this._urls.length;
    return url;
  }

  async _token() {
    if (this._nextToken !== null) {
      const t = this._nextToken;
      this._nextToken = null;
      return t;
    }
    if (this._opts.tokenProvider) return await this._opts.tokenProvider();
    return this._opts.token;
  }

  _connectFrame(token) {
    const frame = { type: "connect" };
    if (token !== undefined && token !== null) frame.token = token;
    // Read again on every attempt: another tab of the origin may have
    // started a new session meanwhile (this one expired), and every tab
    // should end up in the same one.
    if (!this._sessionGiven) {
      const stored = this._readStoredSession();
      if (stored) this._session = stored;
    }
    this._sessionGiven = false;
    if (this._session) frame.session = this._session;
    const subs = [];
    for (const ch of this._channels.values()) {
      if (ch.state === "active") {
        subs.push({ channel: ch.name, offset: ch.last.offset, epoch: ch.last.epoch });
      } else {
        // Pending: made by the server from this list; its `subscribed` push answers it.
        ch.inConnect = this._conn;
        const entry = { channel: ch.name };
        if (ch.requested) Object.assign(entry, ch.requested.explicit.offset !== undefined ? { offset: ch.requested.offset } : {},
          ch.requested.explicit.epoch !== undefined ? { epoch: ch.requested.epoch } : {});
        subs.push(entry);
      }
    }
    if (subs.length) frame.subscriptions = subs;
    return frame;
  }

  async _attemptConnection() {
    this._retryTimer = null;
    if (this._closed || !this._running) return;
    this._setState("connecting");
    let token;
    try {
      token = await this._token();
    } catch (e) {
      this._attemptFailed(fail("unauthorized", `token provider failed: ${e && e.message ? e.message : e}`), true);
      return;
    }
    if (this._closed || !this._running) return;
    const url = this._nextUrl();
    this._lastUrl = url;
    const transport = this._transports[this._transportIndex] ?? this._transports[0];
    this._transportIndex = 0; // later reconnects try the preferred transport again
    const conn = {
      url, token, handle: null, transport: transport.name, fallback: this._transports.indexOf(transport) + 1, opened: false, welcome: null, nextId: 1, pending: new Map(), lastRx: Date.now(),
      disconnect: null, handshakeError: null, timers: [], quiescing: false, onEnded: null, openedAt: 0,
      abandoned: null, refreshing: false,
    };
    this._conn = conn;
    const hooks = {
      onOpen: () => {
        if (this._conn !== conn) return;
        conn.opened = true;
        conn.handle.send(JSON.stringify(this._connectFrame(token)));
      },
      onText: (text) => this._conn === conn && this._onText(conn, text),
      onBinary: () => this._conn === conn && this._emit("error", fail("bad_request", "binary frame ignored")),
      onClose: (code, reason) => this._onClose(conn, code, reason),
    };
    try {
      conn.handle = transport.impl.open(url, hooks);
    } catch (e) {
      this._conn = null;
      this._attemptFailed(e instanceof ScaledSocketsError ? e : fail("bad_request", String(e && e.message || e)), false);
      return;
    }
    conn.timers.push(setTimeout(() => {
      if (this._conn === conn && !conn.welcome) {
        conn.handshakeError = fail("timeout", `no welcome within ${this._opts.connectTimeoutMs} ms`);
        this._abandon(conn, "handshake timeout");
      }
    }, this._opts.connectTimeoutMs));
  }

  /** One attempt (handshake included) failed. */
  _attemptFailed(err, retryable) {
    if (this._closed) return;
    this._setState("disconnected");
    if (!this._everConnected) {
      this._failures += 1;
      if (!retryable || this._failures >= this._urls.length) {
        // The first connect() fails; the client may be connect()ed again.
        this._running = false;
        const waiters = this._connectWaiters;
        this._connectWaiters = [];
        for (const w of waiters) w.reject(err);
        this._emit("error", err);
        return;
      }
    } else if (!retryable) {
      this._stop(err);
      return;
    }
    this._scheduleRetry("backoff");
  }

  /** `when`: "now", "spread" (after a drain: drainDelay) or "backoff". */
  _scheduleRetry(when) {
    if (this._closed || !this._running || this._retryTimer) return;
    const delay =
      when === "now" ? 0 : when === "spread" ? drainDelay() : backoffDelay(this._attempt, this._opts.minMs, this._opts.maxMs);
    this._attempt += 1;
    this._retryTimer = setTimeout(() => this._attemptConnection(), delay);
  }

  _onWelcome(conn, frame) {
    conn.welcome = frame;
    conn.openedAt = Date.now();
    this._everConnected = true;
    this._failures = 0;
    this._session = frame.session;
    this._storeSession(frame.session);
    const offline = this._offlineUnsubs;
    this._offlineUnsubs = new Set();
    if (frame.resumed) {
      for (const channel of offline) {
        if (!this._channels.has(channel)) this._sendUnsubscribe(conn, channel, null);
      }
    }
    // Liveness: the server pings every interval; allow two missed pings plus slack.
    const ping = frame.ping_interval > 0 ? frame.ping_interval : 0;
    if (ping) {
      const limit = 2 * ping + Math.min(ping, 5000);
      const tick = Math.min(Math.max(Math.floor(ping / 4), 10), 1000);
      conn.timers.push(setInterval(() => {
        if (this._conn === conn && Date.now() - conn.lastRx > limit) {
          this._abandon(conn, "no sign of life from the server");
        }
      }, tick));
    }
    this._scheduleRefresh(conn);
    this._setState("connected");
    this._emit("welcome", frame);
    // Subscribed during the handshake, after the connect frame left.
    for (const ch of this._channels.values()) {
      if (ch.state === "pending" && ch.pendingId === null && ch.inConnect !== conn) this._sendSubscribe(ch);
    }
    this._flushQueue(conn);
    this._rejoinCores(conn);
    const waiters = this._connectWaiters;
    this._connectWaiters = [];
    for (const w of waiters) w.resolve(frame);
  }

  _readStoredSession() {
    try {
      const id = storage(this._opts.persistSession)?.getItem(this._storageKey);
      return typeof id === "string" && id.length > 0 && id.length <= 1024 ? id : null;
    } catch {
      return null;
    }
  }

  _storeSession(id) {
    try {
      const store = storage(this._opts.persistSession);
      if (store && store.getItem(this._storageKey) !== id) store.setItem(this._storageKey, id);
    } catch {
      // Full or disabled storage: the session is kept in memory only.
    }
  }

  /** With a token provider and a JWT with `exp`: reconnect with a fresh token shortly before it expires. */
  _scheduleRefresh(conn) {
    if (!this._opts.tokenProvider) return;
    const exp = jwtExpiry(conn.token);
    if (exp === null) return;
    const delay = Math.max(exp - this._opts.tokenRefreshMarginMs - Date.now(), 1000);
    if (delay > MAX_TIMER_MS) return;
    conn.timers.push(setTimeout(async () => {
      if (this._conn !== conn) return;
      let token;
      try {
        token = await this._opts.tokenProvider();
      } catch (e) {
        this._emit("error", fail("unauthorized", `token refresh failed: ${e && e.message ? e.message : e}`));
        return; // the server closes with 4001 at expiry; the reconnect asks again
      }
      if (this._conn !== conn) return;
      // Quiesce: new commands queue; wait for in-flight answers, then swap.
      conn.quiescing = true;
      this._nextToken = token;
      const started = Date.now();
      const check = () => {
        if (this._conn !== conn) return;
        if (conn.pending.size === 0 || Date.now() - started > REFRESH_QUIESCE_MS) {
          conn.refreshing = true;
          conn.handle.close(1000, "token refresh", 0);
        } else {
          conn.timers.push(setTimeout(check, 20));
        }
      };
      check();
    }, delay));
  }

  /** Drops a connection without waiting for the closing handshake; reported as 1006. */
  _abandon(conn, reason) {
    conn.abandoned = reason;
    conn.handle.close(1000, "", 0);
  }

  _onClose(conn, code, reason) {
    if (conn.abandoned) {
      code = 1006;
      reason = conn.abandoned;
    }
    for (const t of conn.timers) clearTimeout(t);
    if (conn.onEnded) conn.onEnded();
    if (this._conn !== conn) return;
    this._conn = null;
    // Answers that can no longer come.
    for (const p of conn.pending.values()) {
      if (p.kind === "request") {
        this._settle(p.req, fail("unavailable",
          `connection lost before the answer (close ${code}); the ${p.req.frame.type} may or may not have been applied`));
      } else if (p.kind === "unsubscribe") {
        this._offlineUnsubs.add(p.channel);
        if (p.done) p.done();
      }
    }
    this._unsubscribing.clear();
    for (const ch of this._channels.values()) {
      if (ch.state === "pending") {
        ch.pendingId = null; // re-sent in the next connect's subscriptions
        ch.inConnect = null;
        ch.buffer = [];
      }
    }
    if (this._closed) return;
    const welcomed = !!conn.welcome;
    if (welcomed && Date.now() - conn.openedAt >= STABLE_AFTER_MS) this._attempt = 0;
    if (welcomed) {
      this._setState("disconnected");
      this._emit("disconnected", { code, reason: reason || conn.disconnect?.reason || "" });
    }
    if (conn.refreshing) {
      this._scheduleRetry("now");
      return;
    }
    const provider = !!this._opts.tokenProvider;
    if (!welcomed && !conn.opened && !conn.handshakeError && conn.fallback < this._transports.length) {
      // This transport could not even be opened (a proxy that refuses
      // WebSocket upgrades): the next one, at once.
      this._transportIndex = conn.fallback;
      this._scheduleRetry("now");
      return;
    }
    if (!welcomed) {
      const err = conn.handshakeError
        ?? (code === 4001 ? fail("unauthorized", reason || "connection refused (4001)")
          : fail("unavailable", `could not connect to ${conn.url} (close ${code}${reason ? `: ${reason}` : ""})`));
      const retryable = err.code === "unauthorized" ? provider && this._everConnected : !FATAL_CLOSE_CODES.has(code);
      this._attemptFailed(err, retryable);
      return;
    }
    const told = conn.disconnect;
    let fatal = null;
    if (code === 4001 && !provider) fatal = fail("unauthorized", reason || "token expired");
    else if (FATAL_CLOSE_CODES.has(code)) fatal = fail("bad_request", `connection closed with ${code}: ${reason}`);
    else if (told && told.reconnect === false) fatal = fail("unavailable", `the server closed the connection (${told.code}: ${told.reason})`);
    else if (!this._opts.reconnect) fatal = fail("unavailable", `connection lost (close ${code})`);
    if (fatal) {
      this._stop(fatal);
      return;
    }
    // Soon when the server asked for it (draining: within DRAIN_SPREAD_MS,
    // spread over the instance's clients; token expired: at once), unless
    // that connection itself was short-lived after failures: then a server
    // that keeps sending clients away is not hammered in a loop.
    const drained = !!(told && told.reconnect);
    const asked = drained || (code === 4001 && provider);
    const soon = asked && (this._attempt === 0 || Date.now() - conn.openedAt >= 1000);
    this._scheduleRetry(soon ? (drained ? "spread" : "now") : "backoff");
  }

  /** Stops for good: rejects everything pending with `err`. */
  _stop(err) {
    this._closed = err;
    this._running = false;
    if (this._retryTimer) clearTimeout(this._retryTimer);
    this._retryTimer = null;
    const conn = this._conn;
    if (conn) {
      for (const t of conn.timers) clearTimeout(t);
      for (const p of conn.pending.values()) if (p.kind === "request") this._settle(p.req, err);
      conn.pending.clear();
    }
    for (const item of this._queue) if (!item.tell) this._settle(item, err);
    this._queue = [];
    for (const ch of this._channels.values()) {
      for (const w of ch.waiters) {
        clearTimeout(w.timer);
        w.reject(err);
      }
      for (const s of ch.subs) s._active = false;
    }
    this._channels.clear();
    for (const w of this._connectWaiters) w.reject(err);
    this._connectWaiters = [];
    this._setState("disconnected");
    this._emit("closed", err.code === "closed" ? null : err);
  }

  // ------------------------------------------------------------ frames

  _onText(conn, text) {
    conn.lastRx = Date.now();
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      this._emit("error", fail("bad_request", "undecodable frame from the server"));
      return;
    }
    if (!frame || typeof frame !== "object") return;
    if (!conn.welcome) {
      if (frame.type === "welcome") this._onWelcome(conn, frame);
      else if (frame.type === "error") {
        conn.handshakeError = fail(WIRE_CODES.has(frame.code) ? frame.code : "internal", frame.message || "");
      } else if (frame.type === "ping") conn.handle.send('{"type":"pong"}');
      return;
    }
    switch (frame.type) {
      case "ping":
        conn.handle.send('{"type":"pong"}');
        break;
      case "reply":
      case "error":
        if (frame.id === undefined || frame.id === null) {
          if (frame.type === "error") this._emit("error", fail(frame.code || "internal", frame.message || ""));
        } else {
          this._onAnswer(conn, frame);
        }
        break;
      case "message":
        this._onMessage(conn, frame);
        break;
      case "subscribed":
        this._onSubscribed(conn, frame);
        break;
      case "unsubscribed":
        this._onUnsubscribed(frame);
        break;
      case "tell":
        this._emit("tell", frame.event, frame.data ?? null, frame);
        break;
      case "ask":
        this._onServerAsk(conn, frame);
        break;
      case "left":
        // Without `rejoin` the membership is over; with it, the app decides
        // (the "left" handler may join again).
        if (!frame.rejoin) this._cores.delete(frame.core);
        this._emit("left", frame);
        break;
      case "disconnect":
        conn.disconnect = frame;
        this._emit("disconnect", frame);
        break;
      default:
        break; // unknown frame types are ignored (forward compatibility)
    }
  }

  _onAnswer(conn, frame) {
    const p = conn.pending.get(frame.id);
    if (!p) return; // its caller gave up (timeout)
    conn.pending.delete(frame.id);
    const err = frame.type === "error" ? fail(frame.code || "internal", frame.message || "") : null;
    if (p.kind === "request") {
      this._settle(p.req, err, frame);
    } else if (p.kind === "unsubscribe") {
      this._unsubscribing.delete(p.channel);
      if (p.done) p.done();
    } else {
      const ch = this._channels.get(p.channel);
      if (!ch || ch.state !== "pending" || ch.pendingId !== frame.id) return;
      if (err) {
        this._channels.delete(ch.name);
        for (const w of ch.waiters) {
          clearTimeout(w.timer);
          w.sub._active = false;
          w.reject(err);
        }
        return;
      }
      this._activate(conn, ch, frame.offset, frame.epoch, frame.recovered);
    }
  }

  /** A pending channel got its position: resolve its waiters, release what was buffered. */
  _activate(conn, ch, offset, epoch, recovered) {
    ch.state = "active";
    ch.pendingId = null;
    ch.inConnect = null;
    ch.last = resync(ch.requested, epoch, offset, recovered);
    const info = { channel: ch.name, offset, epoch, recovered: recovered ?? true };
    const waiters = ch.waiters;
    ch.waiters = [];
    for (const w of waiters) {
      clearTimeout(w.timer);
      w.sub.recovered = ch.requested ? recovered !== false : undefined;
      w.resolve(w.sub);
    }
    for (const s of ch.subs) {
      s._emit("subscribed", info);
      if (recovered === false && ch.requested) s._emit("recoveryFailed", info);
    }
    ch.requested = null;
    const buffer = ch.buffer;
    ch.buffer = [];
    for (const msg of buffer) this._deliver(ch, msg);
    if (ch.subs.size === 0) {
      // Every caller gave up before the answer.
      this._channels.delete(ch.name);
      this._sendUnsubscribe(conn, ch.name, null);
    }
  }

  _onSubscribed(conn, frame) {
    const info = { channel: frame.channel, offset: frame.offset, epoch: frame.epoch, recovered: frame.recovered ?? true };
    const ch = this._channels.get(frame.channel);
    if (!ch) {
      if (this._unsubscribing.has(frame.channel)) return;
      // A subscription the server made (resumed session, application code):
      // track it so it survives reconnects; `subscribe` attaches to it.
      this._channels.set(frame.channel, {
        name: frame.channel, subs: new Set(), state: "active", pendingId: null, waiters: [], buffer: [],
        requested: null, last: { epoch: frame.epoch, offset: frame.offset },
      });
    } else if (ch.state === "pending") {
      this._activate(conn, ch, frame.offset, frame.epoch, frame.recovered);
    } else {
      ch.last = resync(ch.last, frame.epoch, frame.offset, frame.recovered);
      for (const s of ch.subs) {
        s._emit("subscribed", info);
        if (info.recovered === false) s._emit("recoveryFailed", info);
      }
    }
    this._emit("subscribed", info);
  }

  _onUnsubscribed(frame) {
    const ch = this._channels.get(frame.channel);
    const info = { channel: frame.channel, reason: frame.reason ?? "" };
    if (ch) {
      this._channels.delete(frame.channel);
      if (ch.waiters.length) {
        // A server-made subscription (from the connect list) that failed: "<code>: <message>".
        const m = /^([a-z_]+): (.*)$/s.exec(info.reason);
        const err = m && WIRE_CODES.has(m[1]) ? fail(m[1], m[2]) : fail("unavailable", info.reason);
        for (const w of ch.waiters) {
          clearTimeout(w.timer);
          w.reject(err);
        }
      }
      for (const s of ch.subs) {
        s._active = false;
        s._emit("unsubscribed", info);
      }
    }
    this._emit("unsubscribed", info);
  }

  _onMessage(conn, frame) {
    const ch = this._channels.get(frame.channel);
    if (!ch) {
      if (!this._unsubscribing.has(frame.channel)) {
        // A subscription nobody here knows about (e.g. restored with a resumed session).
        this._sendUnsubscribe(conn, frame.channel, null);
      }
      return;
    }
    if (ch.state === "pending") ch.buffer.push(frame);
    else this._deliver(ch, frame);
  }

  /** Delivers a message unless it is a duplicate (offset not beyond the last one of its epoch). */
  _deliver(ch, frame) {
    const last = ch.last;
    if (last.epoch === frame.epoch && frame.offset <= last.offset) return;
    ch.last = { epoch: frame.epoch, offset: frame.offset };
    const data = frame.data ?? null;
    for (const s of [...ch.subs]) {
      if (s._active) this._guard(() => s._handler(data, frame));
    }
    this._emit("message", frame.channel, data, frame);
  }

  _onServerAsk(conn, frame) {
    const { id, event } = frame;
    const send = (answer) => {
      if (this._conn !== conn) return; // asked on a connection that is gone
      let text;
      try {
        text = encode(answer);
      } catch (e) {
        text = encode({ type: "error", id, code: "internal", message: e.message });
      }
      conn.handle.send(text);
    };
    const handler = this._askHandlers.get(event);
    if (!handler) {
      send({ type: "error", id, code: "not_found", message: `no handler for ask event ${JSON.stringify(event)}` });
      return;
    }
    Promise.resolve()
      .then(() => handler(frame.data ?? null, frame))
      .then(
        (data) => send({ type: "reply", id, data: data === undefined ? null : data }),
        (e) => send({
          type: "error", id,
          code: e && WIRE_CODES.has(e.code) ? e.code : "internal",
          message: e && e.message ? String(e.message) : String(e),
        }),
      );
  }
}

/**
 * The position after a subscribe answer or `subscribed` push saying the
 * channel's latest publication is `offset` in `epoch`. With a known position
 * in the same epoch and no `recovered: false`, the missed messages are about
 * to be replayed: keep the old position so they are delivered. Otherwise the
 * stream continues after `offset`.
 */
function resync(last, epoch, offset, recovered) {
  if (last && last.epoch === epoch && recovered !== false) return { epoch, offset: last.offset };
  return { epoch, offset };
}
