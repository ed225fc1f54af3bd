// Several demo instances on a private Redis: cross-instance delivery,
// failover under a publish stream, drain with an immediate reconnect.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { Client } from "../scaled-sockets.js";
import { WebSocket, deferred, sleep, startRedis, startServer, stopAll, waitFor } from "./helpers.js";

const range = (n) => [...Array(n).keys()].map((i) => i + 1);

describe("cluster on Redis", () => {
  let redis;
  const procs = [];
  const clients = [];
  const instance = async (id, args = []) => {
    const p = await startServer({ scaler: redis.url, instanceId: id, args });
    procs.push(p);
    return p;
  };
  const client = (urls, extra = {}) => {
    const c = new Client(urls, { WebSocket, reconnect: { minMs: 50, maxMs: 500 }, ...extra });
    clients.push(c);
    return c;
  };

  before(async () => {
    redis = await startRedis();
  });
  after(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await stopAll(procs, redis);
  });

  test("publications and presence cross instances", async () => {
    const [i1, i2] = [await instance("js-a1"), await instance("js-a2")];
    const sub = client(i1.url), pub = client(i2.url);
    const [w1, w2] = [await sub.connect(), await pub.connect()];
    assert.equal(w1.instance, "js-a1");
    assert.equal(w2.instance, "js-a2");
    const got = [];
    await sub.subscribe("js:cross", (d, m) => got.push([d, m.offset]));
    await pub.subscribe("js:cross", () => {});
    for (let i = 1; i <= 50; i++) await pub.publish("js:cross", i);
    await waitFor(() => got.length === 50, 5000, "50 cross-instance messages");
    assert.deepEqual(got, range(50).map((i) => [i, i]));
    const { clients: list } = await sub.presence("js:cross");
    assert.deepEqual(list.map((e) => e.client).sort(), [w1.client, w2.client].sort());
  });

  test("kill -9 of the client's instance under a publish stream: resumes elsewhere, every message once, in order", async () => {
    const victim = await instance("js-k1");
    const survivor = await instance("js-k2");
    // Round robin: the first attempt goes to the victim, the next to the survivor.
    const c = client([victim.url, survivor.url]);
    const pub = client(survivor.url);
    const w1 = await c.connect();
    assert.equal(w1.instance, "js-k1");
    await pub.connect();
    const got = [];
    const recoveryFailed = [];
    await c.subscribe("js:failover", (d, m) => got.push([d, m.offset]), {
      onRecoveryFailed: (info) => recoveryFailed.push(info),
    });
    const welcomes = [];
    c.on("welcome", (w) => welcomes.push(w));
    const states = [];
    c.on("state", (s) => states.push(s));

    const total = 400;
    let killedAt = 0;
    const publishing = (async () => {
      for (let i = 1; i <= total; i++) {
        await pub.publish("js:failover", i);
        if (i === 150) {
          killedAt = Date.now();
          await victim.kill9();
        }
        await sleep(2);
      }
    })();
    await publishing;
    await waitFor(() => got.length >= total, 10000, `${total} messages (got ${got.length})`);
    await sleep(200); // a duplicate would arrive now
    assert.equal(welcomes.length, 1, "one reconnect");
    assert.equal(welcomes[0].instance, "js-k2");
    assert.equal(welcomes[0].session, w1.session);
    assert.equal(welcomes[0].resumed, true);
    assert.ok(states.includes("disconnected") && states.at(-1) === "connected", states.join(","));
    assert.deepEqual(recoveryFailed, []);
    assert.equal(got.length, total, "no duplicate");
    assert.deepEqual(got, range(total).map((i) => [i, i]), "every publication once, in order");
    assert.ok(killedAt > 0);
  });

  test("a gap history cannot fill is reported as recoveryFailed, and the stream goes on", async () => {
    const victim = await instance("js-g1", ["--history-size", "5"]);
    const survivor = await instance("js-g2", ["--history-size", "5"]);
    // Stay away from the survivor until the gap exists.
    let allowSurvivor = false;
    const c = client([victim.url, survivor.url], {
      chooseUrl: () => (allowSurvivor ? survivor.url : victim.url),
    });
    const pub = client(survivor.url);
    await c.connect();
    await pub.connect();
    const got = [];
    const failed = [];
    const sub = await c.subscribe("js:gap", (d) => got.push(d), { onRecoveryFailed: (i) => failed.push(i) });
    const events = [];
    sub.on("subscribed", (i) => events.push(i));
    await pub.publish("js:gap", 1);
    await waitFor(() => got.length === 1, 3000, "first message");
    await victim.kill9();
    for (let i = 2; i <= 20; i++) await pub.publish("js:gap", i); // 19 missed, history keeps 5
    allowSurvivor = true;
    await waitFor(() => failed.length === 1, 5000, "recoveryFailed");
    assert.equal(failed[0].recovered, false);
    assert.equal(failed[0].offset, 20);
    assert.equal(events.at(-1).recovered, false);
    await pub.publish("js:gap", 21);
    await waitFor(() => got.length === 2, 3000, "the live stream after the gap");
    assert.deepEqual(got, [1, 21], "nothing replayed, nothing duplicated");
    assert.deepEqual(sub.position.offset, 21);
  });

  test("commands issued while disconnected are queued and sent after the reconnect", async () => {
    const victim = await instance("js-q1");
    const survivor = await instance("js-q2");
    const c = client([victim.url, survivor.url], { reconnect: { minMs: 300, maxMs: 600 } });
    await c.connect();
    const down = deferred();
    c.on("state", (s) => s === "disconnected" && down.resolve());
    await victim.kill9();
    await down.promise;
    const answer = c.ask("echo", "queued");
    const got = [];
    const subscribed = c.subscribe("js:queued", (d) => got.push(d));
    c.tell("echo", "told while down");
    const told = deferred();
    c.on("tell", (e, d) => told.resolve(d));
    assert.equal(await answer, "queued");
    await subscribed;
    assert.equal(await told.promise, "told while down");
    assert.equal(c.welcome.instance, "js-q2");
    await c.publish("js:queued", 1);
    await waitFor(() => got.length === 1, 3000, "message");
  });

  test("drain: the disconnect push with reconnect:true makes the client reconnect within a second", async () => {
    const draining = await instance("js-d1", ["--drain-timeout-ms", "3000"]);
    const other = await instance("js-d2");
    // A long backoff: only the drain's spread reconnect (below 1 s) can be fast.
    const c = client([draining.url, other.url], { reconnect: { minMs: 5000, maxMs: 10000 } });
    const pub = client(other.url);
    await c.connect();
    await pub.connect();
    const got = [];
    await c.subscribe("js:drain", (d) => got.push(d));
    await pub.publish("js:drain", 1);
    await waitFor(() => got.length === 1, 3000, "first message");
    const disconnect = deferred();
    c.on("disconnect", (f) => disconnect.resolve(f));
    const back = deferred();
    c.on("welcome", (w) => back.resolve(w));
    const t0 = Date.now();
    draining.signal("SIGTERM");
    const frame = await disconnect.promise;
    assert.equal(frame.code, 1012);
    assert.equal(frame.reconnect, true);
    const w = await back.promise;
    const took = Date.now() - t0;
    assert.equal(w.instance, "js-d2");
    assert.ok(took < 2000, `reconnected after ${took} ms`);
    for (let i = 2; i <= 10; i++) await pub.publish("js:drain", i);
    await waitFor(() => got.length === 10, 3000, "10 messages");
    assert.deepEqual(got, range(10));
    const exit = await draining.exited;
    assert.equal(exit.code, 0, "the draining instance exits 0");
  });
});
