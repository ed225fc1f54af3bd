// Clients through nginx (deploy/nginx/nginx.conf, round robin, no sticky
// sessions) in front of 3 demo instances on a private Redis: kill -9 of one
// instance under a steady publish load.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { Client } from "../scaled-sockets.js";
import {
  WebSocket, freePort, repoRoot, requireBinary, sleep, startRedis, startServer, stopAll, waitFor,
} from "./helpers.js";

const TEMPLATE = path.join(repoRoot, "deploy", "nginx", "nginx.conf");

/** The deployed config with this test's ports: same file, other upstream servers and listen port. */
export function nginxConfig(template, listenPort, upstreamPorts) {
  const servers = upstreamPorts
    .map((p) => `        server 127.0.0.1:${p} max_fails=1 fail_timeout=5s;`)
    .join("\n");
  let out = template.replace(/(upstream scaled_sockets \{[\s\S]*?)(?:\s*server 127\.0\.0\.1:\d+[^\n]*\n)+/, `$1\n${servers}\n`);
  out = out.replace(/listen 127\.0\.0\.1:\d+;/, `listen 127.0.0.1:${listenPort};`);
  if (out === template || !out.includes(`listen 127.0.0.1:${listenPort};`) || !out.includes(servers)) {
    throw new Error(`${TEMPLATE}: upstream block or listen line not found`);
  }
  return out;
}

function portOpen(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1");
    s.on("connect", () => (s.destroy(), resolve(true)));
    s.on("error", () => resolve(false));
  });
}

async function startNginx(listenPort, upstreamPorts) {
  const bin = requireBinary("nginx", "apt-get install -y nginx-light (or nginx)");
  const prefix = mkdtempSync(path.join(os.tmpdir(), "ss-nginx-"));
  mkdirSync(path.join(prefix, "logs"));
  mkdirSync(path.join(prefix, "temp"));
  const conf = path.join(prefix, "nginx.conf");
  writeFileSync(conf, nginxConfig(readFileSync(TEMPLATE, "utf8"), listenPort, upstreamPorts));
  // As root, the workers would run as nobody, who cannot write the prefix.
  const globals = "daemon off;" + (process.getuid?.() === 0 ? " user root;" : "");
  const child = spawn(bin, ["-p", prefix, "-c", conf, "-e", "logs/error.log", "-g", globals], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout.on("data", (d) => (output += d));
  child.stderr.on("data", (d) => (output += d));
  const exited = new Promise((r) => child.on("exit", (code) => r(code)));
  let alive = true;
  child.on("exit", () => (alive = false));
  try {
    await waitFor(async () => !alive || (await portOpen(listenPort)), 10000, "nginx to listen");
  } catch (e) {
    e.message += `\n${output}`;
    throw e;
  }
  if (!alive) {
    let log = "";
    try {
      log = readFileSync(path.join(prefix, "logs", "error.log"), "utf8");
    } catch {}
    throw new Error(`nginx exited at start:\n${output}\n${log}`);
  }
  return {
    url: `http://127.0.0.1:${listenPort}`,
    prefix,
    async stop() {
      // SIGTERM: the master stops its workers (a killed master would leave
      // them running, holding the port and our output pipes), then exits.
      if (alive) process.kill(child.pid, "SIGTERM");
      const timer = setTimeout(() => alive && process.kill(child.pid, "SIGKILL"), 5000);
      await exited;
      clearTimeout(timer);
      rmSync(prefix, { recursive: true, force: true });
    },
  };
}

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
    const out = nginxConfig(readFileSync(TEMPLATE, "utf8"), 9999, [1, 2]);
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
