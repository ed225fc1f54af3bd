// The HTTP fallback (event stream down, POSTs up) through nginx configured to
// refuse WebSocket upgrades (a 403 at /ws, as a proxy that strips them would),
// in front of 3 demo instances on a private Redis. Round robin sends the POSTs
// of a client to other instances than its stream's: they are forwarded to the
// stream's instance, applied in `seq` order, once.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { Client } from "../scaled-sockets.js";
import { WebSocket, freePort, sleep, startNginx, startRedis, startServer, stopAll, waitFor } from "./helpers.js";

const FALLBACK = { transports: ["websocket", "sse"] };

/** A raw event stream (`GET /sse`) read in the background: `frames` fills up as events come. */
async function openStream(base, connect = { type: "connect" }) {
  const abort = new AbortController();
  const res = await fetch(`${base}/sse?connect=${encodeURIComponent(JSON.stringify(connect))}`, { signal: abort.signal });
  const stream = { res, frames: [], ended: false, headers: res.headers, close: () => abort.abort() };
  if (!res.ok) return stream;
  (async () => {
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const event = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const data = event.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          if (data) stream.frames.push(JSON.parse(data));
        }
      }
    } catch {
      // aborted
    }
    stream.ended = true;
  })();
  stream.welcome = await waitFor(() => stream.frames.find((f) => f.type === "welcome"), 5000, "welcome on the stream");
  return stream;
}

async function post(base, body) {
  const res = await fetch(`${base}/sse/send`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  await res.arrayBuffer();
  return res.status;
}

async function metric(proc, name) {
  const text = await (await fetch(`${proc.url}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`scaled_sockets_${name}{`));
  return line ? Number(line.split(" ").at(-1)) : NaN;
}

describe("HTTP fallback through nginx that refuses WebSocket upgrades", { timeout: 120000 }, () => {
  let redis, nginx;
  const instances = [];
  const ids = [];
  const clients = [];
  const client = (extra = {}) => {
    const c = new Client(nginx.url, { WebSocket, ...FALLBACK, reconnect: { minMs: 50, maxMs: 500 }, ...extra });
    clients.push(c);
    return c;
  };

  before(async () => {
    redis = await startRedis();
    for (let i = 1; i <= 3; i++) {
      ids.push(`sse-n${i}`);
      instances.push(await startServer({ scaler: redis.url, instanceId: `sse-n${i}` }));
    }
    nginx = await startNginx(await freePort(), instances.map((p) => p.port), { refuseUpgrades: true });
  });
  after(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await stopAll(instances, redis);
    await nginx?.stop();
  });

  test("nginx refuses the upgrade, and a client without the fallback cannot connect", async () => {
    const status = await new Promise((resolve) => {
      const ws = new WebSocket(nginx.url.replace("http", "ws") + "/ws");
      ws.on("unexpected-response", (_req, res) => resolve(res.statusCode));
      ws.on("open", () => resolve("open"));
      ws.on("error", () => {});
    });
    assert.equal(status, 403);
    const c = client({ transports: ["websocket"], reconnect: false });
    await assert.rejects(c.connect(), (e) => e.code === "unavailable");
  });

  test("the client falls back to SSE: subscribe, publish, ask, tell, presence, core join", async () => {
    const a = client(), b = client();
    const [wa, wb] = [await a.connect(), await b.connect()];
    assert.equal(a.transport, "sse");
    assert.equal(b.transport, "sse");
    const got = [];
    await a.subscribe("sse:chat", (d, m) => got.push([d, m.offset]));
    await b.subscribe("sse:chat", () => {});
    for (let i = 1; i <= 30; i++) await b.publish("sse:chat", i);
    await waitFor(() => got.length === 30, 5000, "30 messages over the stream");
    assert.deepEqual(got, [...Array(30).keys()].map((i) => [i + 1, i + 1]), "in order, once");

    assert.deepEqual(await a.ask("echo", { hello: "sse\nline" }), { hello: "sse\nline" });
    const told = new Promise((resolve) => a.on("tell", (event, data) => event === "echo" && resolve(data)));
    a.tell("echo", { n: 7 });
    assert.deepEqual(await told, { n: 7 });

    const { clients: present } = await a.presence("sse:chat");
    assert.deepEqual(present.map((e) => e.client).sort(), [wa.client, wb.client].sort());

    await a.ask("spawn", { kind: "counter", core: "sse-counter" });
    assert.deepEqual(await a.join("sse-counter"), { value: 0 });
    assert.deepEqual(await b.join("sse-counter"), { value: 0 });
    const seen = new Promise((resolve) => b.on("tell", (event, data, f) => f.core === "sse-counter" && event === "value" && resolve(data)));
    a.tell("incr", null, { core: "sse-counter" });
    assert.deepEqual(await seen, { value: 1 });

    // Round robin sent POSTs to instances other than the streams'.
    let forwarded = 0;
    for (const p of instances) forwarded += await metric(p, "sse_posts_forwarded_total");
    assert.ok(forwarded > 0, `forwarded POSTs: ${forwarded}`);
  });

  test("stream headers, bad requests, forged sessions", async () => {
    const s = await openStream(nginx.url);
    try {
      assert.equal(s.res.status, 200);
      assert.match(s.headers.get("content-type"), /^text\/event-stream/);
      assert.equal(s.headers.get("cache-control"), "no-cache");
      assert.equal((await fetch(`${nginx.url}/sse?connect=%7B%22type%22%3A%22ping%22%7D`)).status, 400);
      assert.equal((await fetch(`${nginx.url}/sse`)).status, 400);
      const { session, client: id } = s.welcome;
      // Every instance, the stream's own included, refuses a session that does not own the client.
      for (const p of instances) {
        assert.equal(await post(p.url, { session: "forged", client: id, seq: 1, frames: [] }), 404, p.url);
        assert.equal(await post(p.url, { session, client: `${s.welcome.instance}.nobody`, seq: 1, frames: [] }), 404);
        assert.equal(await post(p.url, { session, client: id, seq: "1", frames: [] }), 400);
        assert.equal(await post(p.url, "{not json"), 400);
      }
      // `connect` among the frames is a bad_request on the stream.
      assert.equal(await post(nginx.url, { session, client: id, seq: 1, frames: [{ type: "connect", id: 9 }] }), 204);
      const err = await waitFor(() => s.frames.find((f) => f.type === "error" && f.id === 9), 5000, "bad_request");
      assert.equal(err.code, "bad_request");
    } finally {
      s.close();
    }
  });

  test("POSTs on other instances apply in seq order (2 before 1), and a retried seq applies once", async () => {
    const s = await openStream(instances[0].url);
    try {
      const { session, client: id } = s.welcome;
      const [o1, o2] = [instances[1].url, instances[2].url];
      const send = (base, seq, frames) => post(base, { session, client: id, seq, frames });
      assert.equal(await send(o1, 1, [{ type: "subscribe", id: 1, channel: "sse:order" }]), 204);
      await waitFor(() => s.frames.find((f) => f.type === "reply" && f.id === 1), 5000, "subscribed");
      // seq 3 reaches an instance before seq 2: it waits for it.
      assert.equal(await send(o2, 3, [{ type: "publish", id: 3, channel: "sse:order", data: "b" }]), 204);
      await sleep(200);
      assert.equal(s.frames.filter((f) => f.type === "message").length, 0, "seq 3 held until seq 2");
      assert.equal(await send(o1, 2, [{ type: "publish", id: 2, channel: "sse:order", data: "a" }]), 204);
      // Retries of seq 2 and 3, on any instance, are acknowledged and ignored.
      assert.equal(await send(o2, 2, [{ type: "publish", id: 4, channel: "sse:order", data: "dup" }]), 204);
      assert.equal(await send(instances[0].url, 3, [{ type: "publish", id: 5, channel: "sse:order", data: "dup" }]), 204);
      assert.equal(await send(o1, 4, [{ type: "publish", id: 6, channel: "sse:order", data: "c" }]), 204);
      await waitFor(() => s.frames.filter((f) => f.type === "message").length >= 3, 5000, "3 messages");
      await sleep(300);
      const messages = s.frames.filter((f) => f.type === "message").map((f) => f.data);
      assert.deepEqual(messages, ["a", "b", "c"]);
      assert.ok(!s.frames.some((f) => f.id === 4 || f.id === 5), "the retries were not applied");
    } finally {
      s.close();
    }
  });

  test("the same through nginx: seq 3 before seq 2, retries and a forged session", async () => {
    const s = await openStream(nginx.url);
    try {
      const { session, client: id } = s.welcome;
      const send = (seq, frames, sess = session) => post(nginx.url, { session: sess, client: id, seq, frames });
      assert.equal(await send(1, [{ type: "subscribe", id: 1, channel: "sse:nginx-order" }]), 204);
      await waitFor(() => s.frames.find((f) => f.type === "reply" && f.id === 1), 5000, "subscribed");
      assert.equal(await send(3, [{ type: "publish", id: 3, channel: "sse:nginx-order", data: "b" }]), 204);
      assert.equal(await send(2, [{ type: "publish", id: 2, channel: "sse:nginx-order", data: "a" }]), 204);
      for (let i = 0; i < 3; i++) {
        assert.equal(await send(2, [{ type: "publish", id: 10 + i, channel: "sse:nginx-order", data: "dup" }]), 204);
        assert.equal(await send(4, [], "forged"), 404);
      }
      await waitFor(() => s.frames.filter((f) => f.type === "message").length >= 2, 5000, "2 messages");
      await sleep(300);
      assert.deepEqual(s.frames.filter((f) => f.type === "message").map((f) => f.data), ["a", "b"]);
    } finally {
      s.close();
    }
  });

  test("kill -9 of the streams' instance: clients resume on another over SSE, nothing lost", async () => {
    const N = 9;
    const total = 300;
    const channel = "sse:failover";
    const subs = [];
    for (let i = 0; i < N; i++) {
      const c = client();
      const first = await c.connect();
      const rec = { c, first, got: [], welcomes: [], recoveryFailed: 0 };
      c.on("welcome", (w) => rec.welcomes.push(w));
      await c.subscribe(channel, (d, m) => rec.got.push(m.offset), { onRecoveryFailed: () => (rec.recoveryFailed += 1) });
      subs.push(rec);
    }
    const victimId = subs[0].first.instance;
    const victim = instances[ids.indexOf(victimId)];
    const survivor = instances.find((p) => p !== victim);
    // The publisher talks to a surviving instance directly (nginx would refuse its WebSocket).
    const pub = new Client(survivor.url, { WebSocket });
    clients.push(pub);
    await pub.connect();
    for (let i = 1; i <= total; i++) {
      await pub.publish(channel, i);
      if (i === 100) await victim.kill9();
      await sleep(2);
    }
    await waitFor(() => subs.every((s) => s.got.length >= total), 20000,
      `every client to get ${total} messages (${subs.map((s) => s.got.length).join(",")})`);
    await sleep(300);
    const expected = [...Array(total).keys()].map((i) => i + 1);
    for (const s of subs) {
      assert.equal(s.recoveryFailed, 0);
      assert.deepEqual(s.got, expected, "every publication once, in order");
    }
    const moved = subs.filter((s) => s.first.instance === victimId);
    assert.ok(moved.length > 0);
    for (const s of moved) {
      const back = s.welcomes.at(-1);
      assert.notEqual(back.instance, victimId);
      assert.equal(back.session, s.first.session);
      assert.equal(back.resumed, true);
      assert.equal(s.c.transport, "sse");
    }
  });
});
