// Clients through nginx (deploy/nginx/nginx.conf, round robin, no sticky
// sessions) in front of 3 demo instances on a private Redis: kill -9 of one
// instance under a steady publish load.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { Client } from "../scaled-sockets.js";
import {
  WebSocket, freePort, renderNginxConfig, sleep, startNginx, startRedis, startServer, stopAll, waitFor,
} from "./helpers.js";

describe("through nginx", () => {
  let redis, nginx;
  const instances = [];
  const clients = [];

  before(async () => {
    redis = await startRedis();
    for (let i = 1; i <= 3; i++) {
      instances.push(await startServer({ scaler: redis.url, instanceId: `js-n${i}` }));
    }
    nginx = await startNginx(await freePort(), instances.map((p) => p.port));
  });
  after(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await stopAll(instances, redis);
    if (nginx) await nginx.stop();
  });

  test("the template is rewritten to the chosen ports", () => {
    const out = renderNginxConfig(9999, [1, 2]);
    assert.match(out, /listen 127\.0\.0\.1:9999;/);
    assert.match(out, /upstream scaled_sockets \{[^}]*server 127\.0\.0\.1:1 [^}]*server 127\.0\.0\.1:2 [^}]*\}/);
    assert.doesNotMatch(out, /:808[1-3]/);
  });

  test("plain HTTP is proxied", async () => {
    const res = await fetch(`${nginx.url}/healthz`);
    assert.equal(res.status, 200);
  });

  test("kill -9 of an instance under load: every client back within 5 s, none lost, none duplicated", async () => {
    const N = 24;
    const total = 600;
    const channel = "js:nginx";
    const subs = [];
    for (let i = 0; i < N; i++) {
      const c = new Client(nginx.url, { WebSocket, reconnect: { minMs: 100, maxMs: 2000 } });
      clients.push(c);
      const w = await c.connect();
      const rec = { c, first: w, got: [], welcomes: [], recoveryFailed: 0 };
      c.on("welcome", (wl) => rec.welcomes.push({ at: Date.now(), welcome: wl }));
      await c.subscribe(channel, (d, m) => rec.got.push(m.offset), {
        onRecoveryFailed: () => (rec.recoveryFailed += 1),
      });
      subs.push(rec);
    }
    const perInstance = new Map();
    for (const s of subs) perInstance.set(s.first.instance, (perInstance.get(s.first.instance) ?? 0) + 1);
    assert.equal(perInstance.size, 3, `round robin spreads clients: ${[...perInstance]}`);

    // The publisher talks to an instance that survives, so every publish is confirmed.
    const victim = instances[1];
    const victimId = "js-n2";
    const pub = new Client(instances[0].url, { WebSocket });
    clients.push(pub);
    await pub.connect();

    let killedAt = 0;
    for (let i = 1; i <= total; i++) {
      await pub.publish(channel, i);
      if (i === 200) {
        killedAt = Date.now();
        await victim.kill9();
      }
      await sleep(3);
    }
    await waitFor(() => subs.every((s) => s.got.length >= total), 15000,
      `every client to get ${total} messages (${subs.map((s) => s.got.length).join(",")})`);
    await sleep(300); // duplicates would arrive now

    const moved = subs.filter((s) => s.first.instance === victimId);
    assert.ok(moved.length > 0, "some clients were on the victim");
    for (const s of moved) {
      assert.ok(s.welcomes.length >= 1, "reconnected");
      const back = s.welcomes[0];
      assert.ok(back.at - killedAt < 5000, `back after ${back.at - killedAt} ms`);
      assert.notEqual(back.welcome.instance, victimId);
      assert.equal(back.welcome.session, s.first.session);
    }
    for (const s of subs.filter((x) => x.first.instance !== victimId)) {
      assert.equal(s.welcomes.length, 0, "clients of the live instances kept their connection");
    }
    const expected = [...Array(total).keys()].map((i) => i + 1);
    for (const s of subs) {
      assert.equal(s.recoveryFailed, 0);
      assert.deepEqual(s.got, expected, "every publication once, in order");
    }
    const worst = Math.max(...moved.map((s) => s.welcomes[0].at - killedAt));
    console.log(`nginx failover: ${moved.length}/${N} clients moved, slowest back after ${worst} ms`);
  });
});
