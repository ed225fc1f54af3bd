// Test support: real server processes (the demo example), a private Redis,
// free loopback ports, and small waiting helpers. Nothing is mocked.

import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";
import { Client } from "../scaled-sockets.js";

export { WebSocket };

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, "..", "..", "..");

/** The server binary: $SCALED_SOCKETS_BIN, default target/debug/examples/demo. */
export function serverBin() {
  const bin = process.env.SCALED_SOCKETS_BIN
    ? path.resolve(repoRoot, process.env.SCALED_SOCKETS_BIN)
    : path.join(repoRoot, "target", "debug", "examples", "demo");
  if (!existsSync(bin)) {
    throw new Error(`server binary ${bin} not found: run \`cargo build --example demo\` at the repository root, or set SCALED_SOCKETS_BIN`);
  }
  return bin;
}

/** Absolute path of a program on PATH, or a loud failure with an install hint. */
export function requireBinary(name, hint) {
  const r = spawnSync("sh", ["-c", `command -v ${name}`], { encoding: "utf8" });
  const found = r.stdout.trim();
  if (r.status !== 0 || !found) throw new Error(`\`${name}\` is not installed: ${hint}`);
  return found;
}

/** A free TCP port on 127.0.0.1 (bound then released). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value; fails after `ms`. */
export async function waitFor(fn, ms = 5000, what = "condition") {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

function waitForLine(child, pattern, ms, name) {
  return new Promise((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`${name} not ready within ${ms} ms; output:\n${out}`));
    }, ms);
    const onData = (chunk) => {
      out += chunk.toString();
      if (pattern.test(out)) {
        cleanup();
        resolve();
      }
    };
    const onExit = (code) => {
      cleanup();
      reject(new Error(`${name} exited with ${code} before it was ready; output:\n${out}`));
    };
    const cleanup = () => {
      clearTimeout(timer);
      child.stdout?.off("data", onData);
      child.stderr?.off("data", onData);
      child.off("exit", onExit);
    };
    child.stdout?.on("data", onData);
    child.stderr?.on("data", onData);
    child.on("exit", onExit);
  });
}

/** A child process killed (SIGKILL, by pid) by stop() unless it already exited. */
class Proc {
  constructor(child, name) {
    this.child = child;
    this.name = name;
    this.exited = new Promise((r) => child.on("exit", (code, signal) => r({ code, signal })));
    this.alive = true;
    child.on("exit", () => (this.alive = false));
    // Keep reading so a chatty child never blocks on a full pipe.
    child.stdout?.on("data", () => {});
    child.stderr?.on("data", () => {});
  }

  signal(sig) {
    if (this.alive) process.kill(this.child.pid, sig);
  }

  /** SIGSTOP, then waits until the kernel reports every thread stopped. */
  async pause() {
    this.signal("SIGSTOP");
    await waitFor(() => {
      const dir = `/proc/${this.child.pid}/task`;
      const stopped = (t) => {
        try {
          return /^\d+ \(.*\) [tT] /.test(readFileSync(`${dir}/${t}/stat`, "utf8"));
        } catch {
          return true; // the thread exited meanwhile
        }
      };
      return readdirSync(dir).every(stopped);
    }, 5000, `${this.name} to stop`);
  }

  resume() {
    this.signal("SIGCONT");
  }

  async kill9() {
    this.signal("SIGKILL");
    await this.exited;
  }

  async stop() {
    await this.kill9();
  }
}

/** A private redis-server on a free loopback port (never 6379), no persistence. */
export async function startRedis() {
  const bin = requireBinary("redis-server", "apt-get install -y redis-server");
  const port = await freePort();
  const child = spawn(bin, ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  const p = new Proc(child, "redis-server");
  await waitForLine(child, /Ready to accept connections/, 10000, "redis-server");
  p.port = port;
  p.url = `redis://127.0.0.1:${port}`;
  return p;
}

/**
 * One demo instance on a free port. `opts.scaler` (default memory://),
 * `opts.args` (extra flags), `opts.anonymous` (default true).
 */
export async function startServer(opts = {}) {
  const port = opts.port ?? (await freePort());
  const args = ["--listen", `127.0.0.1:${port}`, "--scaler", opts.scaler ?? "memory://"];
  if (opts.anonymous !== false) args.push("--allow-anonymous");
  if (opts.instanceId) args.push("--instance-id", opts.instanceId);
  args.push(...(opts.args ?? []));
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (k.startsWith("SCALED_SOCKETS_")) delete env[k];
  env.RUST_LOG = "info"; // the ready line is logged at info
  const child = spawn(serverBin(), args, { stdio: ["ignore", "pipe", "pipe"], env });
  const p = new Proc(child, `demo :${port}`);
  await waitForLine(child, /listening on/, 20000, `demo on port ${port}`);
  p.port = port;
  p.url = `http://127.0.0.1:${port}`;
  return p;
}

/** Stops every process given (ignores ones already gone). */
export async function stopAll(...procs) {
  await Promise.all(procs.flat().filter(Boolean).map((p) => p.stop()));
}

/** A deferred promise. */
export function deferred() {
  let resolve, reject;
  const promise = new Promise((res, rej) => ((resolve = res), (reject = rej)));
  return { promise, resolve, reject };
}

/** An HS256 JWT for tests. */
export async function makeJwt(secret, claims) {
  const { createHmac } = await import("node:crypto");
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  const sig = createHmac("sha256", secret).update(body).digest("base64url");
  return `${body}.${sig}`;
}

// ------------------------------------------------------------ nginx

const NGINX_RENDER = path.join(repoRoot, "deploy", "nginx", "render.sh");
const NGINX_TEMPLATE = path.join(repoRoot, "deploy", "nginx", "nginx.conf");

function portOpen(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1");
    s.on("connect", () => (s.destroy(), resolve(true)));
    s.on("error", () => resolve(false));
  });
}

/**
 * deploy/nginx/nginx.conf rendered for these ports by deploy/nginx/render.sh,
 * the same script the compose file runs: every test runs the tested file.
 */
export function renderNginxConfig(listenPort, upstreamPorts) {
  const rendered = spawnSync("sh", [NGINX_RENDER, NGINX_TEMPLATE, `127.0.0.1:${listenPort}`, ...upstreamPorts.map((p) => `127.0.0.1:${p}`)], {
    encoding: "utf8",
  });
  if (rendered.status !== 0) throw new Error(`${NGINX_RENDER} failed (${rendered.status}): ${rendered.stderr}`);
  return rendered.stdout;
}

/**
 * The rendered config, made to refuse WebSocket upgrades at /ws (403), as a
 * proxy that strips them would: clients must use the HTTP fallback.
 */
export function refuseUpgrades(config) {
  const marker = /(location = \/ws \{\n)/;
  if (!marker.test(config)) throw new Error("no `location = /ws {` in the nginx config");
  return config.replace(marker, "$1            if ($http_upgrade) { return 403; }\n");
}

/**
 * nginx running that rendered config; stop() ends it (SIGTERM, then SIGKILL).
 * `opts.refuseUpgrades`: answer every WebSocket upgrade with 403.
 */
export async function startNginx(listenPort, upstreamPorts, opts = {}) {
  const bin = requireBinary("nginx", "apt-get install -y nginx-light (or nginx)");
  const prefix = mkdtempSync(path.join(os.tmpdir(), "ss-nginx-"));
  mkdirSync(path.join(prefix, "logs"));
  mkdirSync(path.join(prefix, "temp"));
  const conf = path.join(prefix, "nginx.conf");
  const rendered = renderNginxConfig(listenPort, upstreamPorts);
  writeFileSync(conf, opts.refuseUpgrades ? refuseUpgrades(rendered) : rendered);
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
  await waitFor(async () => !alive || (await portOpen(listenPort)), 10000, "nginx to listen");
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
      // SIGTERM: the master stops its workers, then exits.
      if (alive) process.kill(child.pid, "SIGTERM");
      const timer = setTimeout(() => alive && process.kill(child.pid, "SIGKILL"), 5000);
      await exited;
      clearTimeout(timer);
      rmSync(prefix, { recursive: true, force: true });
    },
  };
}

// ------------------------------------------------------------ the demo page in a browser

const CHROMIUM = "/usr/bin/chromium";

/** Debian's chromium, headless, driven by playwright-core (it never downloads a browser). */
export async function launchChromium() {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} not found: the browser tests need Debian's chromium (apt-get install -y chromium); it never downloads a browser`);
  }
  const { chromium } = await import("playwright-core");
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}

/**
 * `test` for steps that build on each other: once one fails, the rest fail at
 * once. One per `describe`.
 */
export function chainedSteps(test) {
  let failed = null;
  return (name, fn) => test(name, async (t) => {
    if (failed) throw new Error(`not run: "${failed}" failed`);
    try {
      await fn(t);
    } catch (e) {
      failed = name;
      throw e;
    }
  });
}

/**
 * The demo page at `url` in a new context of `browser`, the user's name filled
 * in: `{ name, page, context, errors }`, where `errors` collects uncaught
 * exceptions and console errors. Every state the badge shows, on every load
 * of the page, is kept in `window.__states`.
 * `opts.viewport` (default 1280 x 800); `opts.expectedConsoleErrors`: a
 * RegExp of console errors the test expects (not collected).
 */
export async function openDemoPage(browser, url, name, opts = {}) {
  const { viewport = { width: 1280, height: 800 }, expectedConsoleErrors = null } = opts;
  const context = await browser.newContext({ viewport, deviceScaleFactor: 1 });
  context.setDefaultTimeout(10000);
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(`uncaught: ${e.message}`));
  page.on("console", (m) => m.type() === "error" && !expectedConsoleErrors?.test(m.text())
    && errors.push(`console: ${m.text()} (${m.location().url})`));
  await context.addInitScript(() => {
    window.__states = [];
    document.addEventListener("DOMContentLoaded", () => {
      const badge = document.getElementById("state");
      window.__states.push(badge.textContent);
      new MutationObserver(() => window.__states.push(badge.textContent))
        .observe(badge, { childList: true, characterData: true, subtree: true });
    });
  });
  await page.goto(`${url}/`);
  await page.fill("#name", name);
  return { name, page, context, errors };
}

/** The page's connection panel (`instance`, `client`, `session`, …) and its state badge. */
export function pageInfo(page) {
  return page.evaluate(() => {
    const info = { state: document.getElementById("state").textContent };
    const cells = [...document.querySelectorAll("#info > *")];
    for (let i = 0; i + 1 < cells.length; i += 2) info[cells[i].textContent] = cells[i + 1].textContent;
    return info;
  });
}

/** Chat lines as shown ("name: text"), notices left out. */
export function chatLines(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll("#messages > div")]
      .filter((d) => !d.querySelector(".notice"))
      .map((d) => d.lastElementChild.textContent));
}

/** Waits until the page is connected and subscribed; answers its connection panel. */
export async function waitConnected(page, ms = 10000) {
  try {
    await page.waitForFunction(() => {
      const state = document.getElementById("state").textContent;
      return state === "connected" && document.querySelectorAll("#info dd").length > 0 && !document.getElementById("send").disabled;
    }, null, { timeout: ms, polling: 20 });
  } catch (e) {
    const seen = await page.evaluate(() => ({
      states: window.__states,
      chatError: document.getElementById("chat-error").textContent,
      lines: [...document.querySelectorAll("#messages > div")].map((d) => d.textContent),
    }));
    throw new Error(`page not connected and subscribed: ${JSON.stringify({ ...(await pageInfo(page)), ...seen })} (${e.message})`);
  }
  return pageInfo(page);
}

/** Sends `text` to the chat from the page. */
export async function say(page, text) {
  await page.fill("#text", text);
  await page.click("#send");
  // Cleared by the page once handed to the client.
  await page.waitForFunction(() => document.getElementById("text").value === "", null, { timeout: 5000, polling: 20 });
}

/** Waits until `page` shows every line of `expected` (and fails on an error shown in the chat card). */
export async function waitLines(page, expected, ms, who) {
  try {
    await page.waitForFunction((want) => {
      const have = new Set([...document.querySelectorAll("#messages > div")].map((d) => d.lastElementChild.textContent));
      return want.every((w) => have.has(w)) || document.getElementById("chat-error").textContent !== "";
    }, expected, { timeout: ms, polling: 50 });
  } catch (e) {
    const have = await chatLines(page);
    throw new Error(`${who}: missing ${expected.filter((w) => !have.includes(w)).join(", ")} (${e.message})`);
  }
  const error = await page.textContent("#chat-error");
  assert.equal(error, "", `${who} shows an error`);
}

/**
 * A steady publisher of chat lines ("feeder: tick N", every 40 ms) to
 * `channel` through a client of its own on `url`: `{ fed, stop }`, where
 * `fed` holds the lines published so far and `stop()` ends it.
 */
export async function startFeeder(url, channel) {
  const feeder = new Client(url, { WebSocket });
  await feeder.connect();
  const fed = [];
  let feeding = true;
  const feeding$ = (async () => {
    for (let i = 1; feeding; i++) {
      await feeder.publish(channel, { name: "feeder", text: `tick ${i}` });
      fed.push(`feeder: tick ${i}`);
      await sleep(40);
    }
  })();
  return {
    fed,
    async stop() {
      feeding = false;
      await feeding$;
      await feeder.close();
    },
  };
}
