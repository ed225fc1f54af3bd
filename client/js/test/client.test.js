// One demo instance (memory scaler): the API against a real server.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { Client, ScaledSocketsError, socketUrl, httpBase, backoffDelay, drainDelay, DRAIN_SPREAD_MS } from "../scaled-sockets.js";
import { WebSocket, deferred, freePort, makeJwt, sleep, startServer, stopAll, waitFor } from "./helpers.js";

const opts = (extra = {}) => ({ WebSocket, reconnect: { minMs: 50, maxMs: 500 }, ...extra });

describe("one instance", () => {
  let server;
  const clients = [];
  const client = (urlOrExtra, extra) => {
    const [url, o] = typeof urlOrExtra === "string" || Array.isArray(urlOrExtra)
      ? [urlOrExtra, extra]
      : [server.url, urlOrExtra];
    const c = new Client(url, opts(o));
    clients.push(c);
    return c;
  };

  before(async () => {
    server = await startServer();
  });
  after(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await stopAll(server);
  });

  test("connect resolves with the welcome and reports states", async () => {
    const c = client();
    const states = [];
    c.on("state", (s) => states.push(s));
    const welcomes = [];
    c.on("welcome", (w) => welcomes.push(w));
    const w = await c.connect();
    assert.equal(w.type, "welcome");
    assert.equal(w.user, null);
    assert.equal(w.resumed, false);
    assert.ok(w.client.startsWith(w.instance + "."), w.client);
    assert.deepEqual(states, ["connecting", "connected"]);
    assert.equal(c.state, "connected");
    assert.equal(c.session, w.session);
    assert.deepEqual(welcomes, [w]);
    assert.equal(await c.connect(), w, "a second connect() resolves with the same welcome");
  });

  test("subscribe, publish, deliver in order, unsubscribe", async () => {
    const c = client();
    await c.connect();
    const got = [];
    const sub = await c.subscribe("js:pubsub", (data, msg) => got.push([data, msg.offset, msg.channel]));
    assert.equal(sub.channel, "js:pubsub");
    assert.equal(sub.recovered, undefined);
    assert.deepEqual(sub.position.offset, 0);
    const pubs = [];
    for (let i = 1; i <= 20; i++) pubs.push(c.publish("js:pubsub", { i, big: "x".repeat(i) }));
    const positions = await Promise.all(pubs);
    assert.deepEqual(positions.map((p) => p.offset), [...Array(20).keys()].map((i) => i + 1));
    assert.equal(typeof positions[0].epoch, "string");
    await waitFor(() => got.length === 20, 5000, "20 messages");
    assert.deepEqual(got.map((g) => g[0].i), [...Array(20).keys()].map((i) => i + 1));
    assert.deepEqual(got.map((g) => g[1]), [...Array(20).keys()].map((i) => i + 1));
    assert.deepEqual(sub.position, { offset: 20, epoch: positions[0].epoch });
    await sub.unsubscribe();
    assert.equal(sub.active, false);
    await c.publish("js:pubsub", "after");
    await sleep(100);
    assert.equal(got.length, 20, "no delivery after unsubscribe");
  });

  test("two subscriptions of one channel both get every message", async () => {
    const c = client();
    await c.connect();
    const a = [], b = [];
    const s1 = await c.subscribe("js:twice", (d) => a.push(d));
    const s2 = await c.subscribe("js:twice", (d) => b.push(d));
    await c.publish("js:twice", 1);
    await waitFor(() => a.length === 1 && b.length === 1, 3000, "both handlers");
    await s1.unsubscribe();
    await c.publish("js:twice", 2);
    await waitFor(() => b.length === 2, 3000, "second handler");
    assert.deepEqual(a, [1]);
    await s2.unsubscribe();
  });

  test("ask echo and whoami, tell echo", async () => {
    const c = client();
    const w = await c.connect();
    const data = { nested: [1, "two", { three: null }], unicode: "é✓", n: 12345678901 };
    assert.deepEqual(await c.ask("echo", data), data);
    assert.equal(await c.ask("echo", null), null);
    assert.deepEqual(await c.ask("whoami", {}), { user: null, client: w.client, instance: w.instance });
    const told = deferred();
    c.on("tell", (event, d, frame) => told.resolve([event, d, frame.type]));
    c.tell("echo", { hello: "world" });
    assert.deepEqual(await told.promise, ["echo", { hello: "world" }, "tell"]);
  });

  test("errors: unknown ask, join and leave reject with not_found", async () => {
    const c = client();
    await c.connect();
    for (const call of [
      () => c.ask("no-such-event", {}),
      () => c.ask("echo", {}, { core: "match-42" }),
      () => c.join("match-42", {}),
      () => c.leave("match-42"),
    ]) {
      await assert.rejects(call(), (e) => {
        assert.ok(e instanceof ScaledSocketsError);
        assert.ok(e instanceof Error);
        assert.equal(e.code, "not_found");
        assert.ok(e.message.length > 0);
        return true;
      });
    }
    const serverError = deferred();
    c.on("error", (e) => serverError.resolve(e));
    c.tell("no-such-tell", {});
    assert.equal((await serverError.promise).code, "not_found", "a failed tell surfaces as an error event");
    await assert.rejects(c.subscribe("", () => {}), { code: "bad_request" });
    assert.throws(() => c.tell(""), { code: "bad_request" });
  });

  test("presence lists every subscribed connection", async () => {
    const a = client(), b = client();
    const wa = await a.connect(), wb = await b.connect();
    await a.subscribe("js:presence", () => {});
    await b.subscribe("js:presence", () => {});
    const { clients: list } = await a.presence("js:presence");
    assert.deepEqual(list.map((e) => e.client).sort(), [wa.client, wb.client].sort());
    assert.ok(list.every((e) => e.user === null));
  });

  test("ask times out client-side when the server does not answer", async () => {
    const c = client();
    await c.connect();
    await server.pause();
    try {
      const t0 = Date.now();
      await assert.rejects(c.ask("echo", 1, { timeoutMs: 300 }), { code: "timeout" });
      assert.ok(Date.now() - t0 >= 290);
    } finally {
      server.resume();
    }
    assert.equal(await c.ask("echo", 2), 2, "the connection still works");
  });

  test("subscribe from a position replays what was missed, or says it cannot", async () => {
    const pub = client();
    await pub.connect();
    let epoch;
    for (let i = 1; i <= 5; i++) epoch = (await pub.publish("js:history", i)).epoch;
    const c = client();
    await c.connect();
    const got = [];
    const sub = await c.subscribe("js:history", (d, m) => got.push([d, m.offset]), { offset: 2, epoch });
    assert.equal(sub.recovered, true);
    await waitFor(() => got.length === 3, 3000, "3 replayed messages");
    assert.deepEqual(got, [[3, 3], [4, 4], [5, 5]]);
    await pub.publish("js:history", 6);
    await waitFor(() => got.length === 4, 3000, "live message");
    assert.deepEqual(got[3], [6, 6]);

    const failed = [];
    const other = client();
    await other.connect();
    const got2 = [];
    const sub2 = await other.subscribe("js:history", (d) => got2.push(d), {
      offset: 1, epoch: "not-the-epoch", onRecoveryFailed: (info) => failed.push(info),
    });
    assert.equal(sub2.recovered, false);
    assert.equal(failed.length, 1);
    assert.equal(failed[0].recovered, false);
    assert.equal(failed[0].epoch, epoch);
    await pub.publish("js:history", 7);
    await waitFor(() => got2.length === 1, 3000, "live message after a failed recovery");
    assert.deepEqual(got2, [7]);
  });

  test("close rejects what is pending and every later call", async () => {
    const c = client();
    await c.connect();
    const closed = deferred();
    c.on("closed", (e) => closed.resolve(e));
    await server.pause();
    let pending;
    try {
      pending = c.ask("echo", 1).then(() => null, (e) => e);
      await sleep(20);
      await c.close();
    } finally {
      server.resume();
    }
    assert.equal((await pending)?.code, "closed");
    assert.equal(await closed.promise, null);
    assert.equal(c.state, "disconnected");
    await assert.rejects(c.publish("x", 1), { code: "closed" });
    await assert.rejects(c.connect(), { code: "closed" });
    assert.throws(() => c.tell("echo", 1), { code: "closed" });
  });

  test("a URL list skips a dead URL; a single dead URL rejects connect()", async () => {
    const dead = `http://127.0.0.1:${await freePort()}`;
    const c = client([dead, server.url]);
    const w = await c.connect();
    assert.equal(typeof w.client, "string");
    const lone = client(dead);
    await assert.rejects(lone.connect(), { code: "unavailable" });
    assert.equal(lone.state, "disconnected");
  });

  test("sessionStorage: a new client (a reloaded page) resumes the session", async () => {
    // The Storage interface of a browser tab, as far as the client uses it.
    const items = new Map();
    globalThis.sessionStorage = {
      getItem: (k) => (items.has(k) ? items.get(k) : null),
      setItem: (k, v) => items.set(k, String(v)),
    };
    try {
      const first = client({ sessionStorage: true });
      const w1 = await first.connect();
      assert.equal([...items.values()][0], w1.session);
      await first.subscribe("stored:tab", () => {});
      await first.close();
      const second = client({ sessionStorage: true });
      const w2 = await second.connect();
      assert.equal(w2.session, w1.session);
      assert.equal(w2.resumed, true);
      const other = client(); // without the option (and no localStorage in Node): a new session
      assert.notEqual((await other.connect()).session, w1.session);
    } finally {
      delete globalThis.sessionStorage;
    }
  });

  test("persistSession: \"local\" (the default) shares the id through localStorage; false keeps none", async () => {
    const local = new Map();
    const tab = new Map();
    const fake = (items) => ({
      getItem: (k) => (items.has(k) ? items.get(k) : null),
      setItem: (k, v) => items.set(k, String(v)),
    });
    globalThis.localStorage = fake(local);
    globalThis.sessionStorage = fake(tab);
    try {
      const one = client();
      const w1 = await one.connect();
      assert.deepEqual([...local.values()], [w1.session]);
      assert.equal(tab.size, 0);
      // Another tab of the origin, while the first is open: the same session.
      const two = client();
      assert.equal(two.session, w1.session, "read from storage before connecting");
      const w2 = await two.connect();
      assert.equal(w2.session, w1.session);
      assert.equal(w2.resumed, true, "a live session is joined (nothing of the open tab is restored)");
      const alone = client({ persistSession: false });
      assert.notEqual((await alone.connect()).session, w1.session);
      const perTab = client({ persistSession: "tab" });
      const w3 = await perTab.connect();
      assert.notEqual(w3.session, w1.session);
      assert.deepEqual([...tab.values()], [w3.session]);
      assert.throws(() => client({ persistSession: "cookie" }), { code: "bad_request" });
    } finally {
      delete globalThis.localStorage;
      delete globalThis.sessionStorage;
    }
  });

  test("calls made before connect() are held and sent once connected", async () => {
    const c = client();
    const early = c.ask("echo", "early");
    const got = [];
    const subP = c.subscribe("js:early", (d) => got.push(d));
    await c.connect();
    assert.equal(await early, "early");
    await subP;
    await c.publish("js:early", 1);
    await waitFor(() => got.length === 1, 3000, "message on an early subscription");
  });
});

describe("server pings", () => {
  test("pings are answered: an idle client stays on its connection", async () => {
    const server = await startServer({ args: ["--ping-interval-ms", "150"] });
    const c = new Client(server.url, opts());
    try {
      const w = await c.connect();
      assert.equal(w.ping_interval, 150);
      const states = [];
      c.on("state", (s) => states.push(s));
      await sleep(1200); // 8 intervals: without pongs the server closes after 2-3
      assert.deepEqual(states, []);
      assert.equal(c.welcome.client, w.client);
    } finally {
      await c.close();
      await stopAll(server);
    }
  });
});

describe("fatal closes", () => {
  test("a frame over the server's limit stops the client with an error", async () => {
    const server = await startServer({ args: ["--max-frame-bytes", "512"] });
    const c = new Client(server.url, opts());
    try {
      await c.connect();
      const closed = deferred();
      c.on("closed", (e) => closed.resolve(e));
      await assert.rejects(c.publish("js:big", "x".repeat(2000)), (e) => e instanceof ScaledSocketsError);
      const err = await closed.promise;
      assert.ok(err instanceof ScaledSocketsError);
      assert.equal(c.state, "disconnected");
      await assert.rejects(c.ask("echo", 1), (e) => e === err);
    } finally {
      await c.close();
      await stopAll(server);
    }
  });
});

describe("tokens", () => {
  const secret = "js-test-secret";
  let server;
  before(async () => {
    server = await startServer({ anonymous: false, args: ["--token-secret", secret] });
  });
  after(() => stopAll(server));
  const claims = (sub, ttlS) => ({ sub, exp: Math.floor(Date.now() / 1000) + ttlS, channels: ["*"], publish: ["*"] });

  test("no token: connect rejects with unauthorized", async () => {
    const c = new Client(server.url, opts());
    await assert.rejects(c.connect(), { code: "unauthorized" });
    assert.equal(c.state, "disconnected");
    await c.close();
  });

  test("a valid token connects as its user", async () => {
    const c = new Client(server.url, opts({ token: await makeJwt(secret, claims("alice", 600)) }));
    const w = await c.connect();
    assert.equal(w.user, "alice");
    await c.close();
  });

  test("the token provider refreshes before expiry; the subscription sees no gap", async () => {
    let calls = 0;
    const c = new Client(server.url, opts({
      tokenProvider: async () => {
        calls += 1;
        return makeJwt(secret, claims("bob", 3));
      },
      tokenRefreshMarginMs: 1500, // refresh ~1.5 s after connecting
    }));
    const pub = new Client(server.url, opts({ token: await makeJwt(secret, claims("pub", 600)) }));
    try {
      const w1 = await c.connect();
      await pub.connect();
      assert.equal(calls, 1);
      const got = [];
      await c.subscribe("js:refresh", (d) => got.push(d));
      const welcomes = [];
      c.on("welcome", (w) => welcomes.push(w));
      for (let i = 1; i <= 60; i++) {
        await pub.publish("js:refresh", i);
        await sleep(40);
      }
      await waitFor(() => got.length >= 60, 5000, "60 messages");
      assert.ok(calls >= 2, `provider called ${calls} times`);
      assert.ok(welcomes.length >= 1, "reconnected with the fresh token");
      assert.equal(welcomes[0].session, w1.session, "same session");
      assert.equal(welcomes[0].user, "bob");
      assert.deepEqual(got, [...Array(60).keys()].map((i) => i + 1));
    } finally {
      await c.close();
      await pub.close();
    }
  });
});

describe("helpers", () => {
  test("httpBase maps base URLs to the HTTP fallback's base", () => {
    assert.equal(httpBase("ws://h:1/ws"), "http://h:1");
    assert.equal(httpBase("wss://h/app/ws"), "https://h/app");
    assert.equal(httpBase("http://h:1/"), "http://h:1");
  });

  test("socketUrl maps base URLs to the /ws endpoint", () => {
    assert.equal(socketUrl("http://h:1"), "ws://h:1/ws");
    assert.equal(socketUrl("https://h/app/"), "wss://h/app/ws");
    assert.equal(socketUrl("ws://h:1"), "ws://h:1/ws");
    assert.equal(socketUrl("wss://h:1/ws"), "wss://h:1/ws");
    assert.throws(() => socketUrl("ftp://h"), { code: "bad_request" });
    assert.throws(() => new Client("not a url", opts()), { code: "bad_request" });
    assert.ok(new Client("http://h", opts({ transports: ["sse"] })), "the HTTP fallback alone is a valid choice");
    assert.throws(() => new Client("http://h", opts({ transports: [] })), { code: "bad_request" });
    assert.throws(() => new Client("http://h", opts({ transports: ["carrier-pigeon"] })), { code: "bad_request" });
  });

  test("backoff uses full jitter under a doubling ceiling", () => {
    for (let attempt = 0; attempt < 40; attempt++) {
      const cap = Math.min(1000, 100 * 2 ** (attempt + 1));
      for (let i = 0; i < 50; i++) {
        const d = backoffDelay(attempt, 100, 1000);
        assert.ok(d >= 0 && d < cap, `attempt ${attempt}: ${d}`);
      }
    }
    const spread = new Set(Array.from({ length: 50 }, () => backoffDelay(3, 100, 10000)));
    assert.ok(spread.size > 10, "delays are spread");
  });

  test("after a drain, reconnects are spread over a second, not all at once", () => {
    const delays = Array.from({ length: 200 }, () => drainDelay());
    assert.ok(delays.every((d) => d >= 0 && d < DRAIN_SPREAD_MS), `${delays}`);
    assert.equal(DRAIN_SPREAD_MS, 1000);
    // A drained instance's clients do not all come back in one instant.
    assert.ok(delays.filter((d) => d < 100).length < 100, "most wait");
    assert.ok(new Set(delays).size > 50, "delays are spread");
  });
});

describe("bad data", () => {
  test("data JSON cannot carry is rejected with bad_request before sending", async () => {
    const server = await startServer();
    const c = new Client(server.url, opts());
    try {
      await c.connect();
      await assert.rejects(c.publish("js:bad", { n: 10n }), { code: "bad_request" });
      const cyclic = {};
      cyclic.self = cyclic;
      await assert.rejects(c.ask("echo", cyclic), { code: "bad_request" });
      assert.throws(() => c.tell("echo", { n: 1n }), { code: "bad_request" });
      assert.equal(await c.ask("echo", "still fine"), "still fine");
    } finally {
      await c.close();
      await stopAll(server);
    }
  });
});
