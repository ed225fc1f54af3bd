// The demo page in headless Chromium (Debian's chromium driven by
// playwright-core) through nginx configured to refuse WebSocket upgrades, in
// front of 3 demo instances on a private Redis: the page falls back to the
// HTTP transport by itself; chat, presence and the counter core work; the
// instance of one page's stream is killed and the page resumes on another with
// every message exactly once.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { chromium } from "playwright-core";
import { Client } from "../scaled-sockets.js";
import { WebSocket, freePort, sleep, startNginx, startRedis, startServer, stopAll, waitFor } from "./helpers.js";

const CHROMIUM = "/usr/bin/chromium";

function pageInfo(page) {
  return page.evaluate(() => {
    const info = { state: document.getElementById("state").textContent };
    const cells = [...document.querySelectorAll("#info > *")];
    for (let i = 0; i + 1 < cells.length; i += 2) info[cells[i].textContent] = cells[i + 1].textContent;
    return info;
  });
}

function chatLines(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll("#messages > div")]
      .filter((d) => !d.querySelector(".notice"))
      .map((d) => d.lastElementChild.textContent));
}

async function waitConnected(page, ms = 10000) {
  await page.waitForFunction(() => document.getElementById("state").textContent === "connected"
    && document.querySelectorAll("#info dd").length > 0 && !document.getElementById("send").disabled,
  null, { timeout: ms, polling: 20 });
  return pageInfo(page);
}

async function say(page, text) {
  await page.fill("#text", text);
  await page.click("#send");
  await page.waitForFunction(() => document.getElementById("text").value === "", null, { timeout: 5000, polling: 20 });
}

async function waitLines(page, expected, ms, who) {
  await waitFor(async () => {
    const have = new Set(await chatLines(page));
    return expected.every((w) => have.has(w));
  }, ms, `${who} to show ${expected.length} lines`);
  assert.equal(await page.textContent("#chat-error"), "", `${who} shows an error`);
}

describe("the demo page in chromium over the HTTP fallback (nginx refuses WebSockets)", { timeout: 120000 }, () => {
  let redis, nginx, browser;
  const instances = new Map();
  let alice, bob;
  const sent = [];

  before(async () => {
    if (!existsSync(CHROMIUM)) {
      throw new Error(`${CHROMIUM} not found: the browser test needs Debian's chromium (apt-get install -y chromium); it never downloads a browser`);
    }
    redis = await startRedis();
    for (let i = 1; i <= 3; i++) {
      const id = `bsse-n${i}`;
      instances.set(id, await startServer({ scaler: redis.url, instanceId: id }));
    }
    nginx = await startNginx(await freePort(), [...instances.values()].map((p) => p.port), { refuseUpgrades: true });
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
  });

  after(async () => {
    await browser?.close();
    await stopAll([...instances.values()], redis);
    await nginx?.stop();
  });

  let failed = null;
  const step = (name, fn) => test(name, async (t) => {
    if (failed) throw new Error(`not run: "${failed}" failed`);
    try {
      await fn(t);
    } catch (e) {
      failed = name;
      throw e;
    }
  });

  async function openPage(name) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    context.setDefaultTimeout(10000);
    const page = await context.newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(`uncaught: ${e.message}`));
    // Expected, and logged by Chromium: the refused WebSocket, and the stream
    // cut when its instance is killed. Anything else is not.
    const expected = /WebSocket connection to .* failed|ERR_INCOMPLETE_CHUNKED_ENCODING/;
    page.on("console", (m) => m.type() === "error" && !expected.test(m.text()) && errors.push(`console: ${m.text()}`));
    await page.goto(`${nginx.url}/`);
    await page.fill("#name", name);
    return { name, page, context, errors };
  }

  step("two pages connect over SSE, on different instances", async () => {
    alice = await openPage("alice");
    bob = await openPage("bob");
    const a = await waitConnected(alice.page);
    let b = await waitConnected(bob.page);
    for (let i = 0; i < 8 && b.instance === a.instance; i++) {
      await bob.context.close();
      bob = await openPage("bob");
      b = await waitConnected(bob.page);
    }
    assert.notEqual(b.instance, a.instance);
    assert.equal(a.transport, "sse");
    assert.equal(b.transport, "sse");
  });

  step("chat both ways, presence, the counter core", async () => {
    for (const [who, text] of [["alice", "hello over sse"], ["bob", "hi alice"], ["alice", "no websocket here"]]) {
      const page = who === "alice" ? alice.page : bob.page;
      await say(page, text);
      sent.push(`${who}: ${text}`);
      // Two speakers' POSTs may take different paths (one forwarded to its
      // stream's instance, one not): the order of the chat is only fixed once
      // each line is published, so wait for it before the next speaker.
      await waitLines(page, sent, 5000, who);
    }
    await waitLines(alice.page, sent, 5000, "alice");
    await waitLines(bob.page, sent, 5000, "bob");
    assert.deepEqual(await chatLines(bob.page), sent);
    const a = await pageInfo(alice.page);
    await waitFor(async () => {
      const list = await bob.page.evaluate(() => [...document.querySelectorAll("#presence li")].map((li) => li.textContent));
      return list.includes(a.client);
    }, 6000, "bob's presence list to show alice");
    for (const p of [alice, bob]) {
      await p.page.click("#core-form button");
      await p.page.waitForFunction(() => /runs on/.test(document.getElementById("core-info").textContent), null, { timeout: 10000 });
    }
    const start = Number(await alice.page.textContent("#counter-value"));
    for (let i = 0; i < 3; i++) await alice.page.click("#incr");
    for (const p of [alice, bob]) {
      await waitFor(async () => (await p.page.textContent("#counter-value")) === String(start + 3), 5000, `${p.name}'s counter`);
    }
  });

  step("kill -9 of alice's stream instance: she resumes elsewhere over SSE, every message once", async () => {
    const before = { a: await pageInfo(alice.page), b: await pageInfo(bob.page) };
    const victim = instances.get(before.a.instance);
    const survivor = instances.get(before.b.instance);
    const feeder = new Client(survivor.url, { WebSocket });
    await feeder.connect();
    const channel = await alice.page.inputValue("#channel");
    const fed = [];
    let feeding = true;
    const feeding$ = (async () => {
      for (let i = 1; feeding; i++) {
        await feeder.publish(channel, { name: "feeder", text: `tick ${i}` });
        fed.push(`feeder: tick ${i}`);
        await sleep(40);
      }
    })();
    await sleep(200);
    await victim.kill9();
    await say(bob.page, "during outage");
    sent.push("bob: during outage");
    await sleep(300);
    const a = await waitConnected(alice.page, 10000);
    feeding = false;
    await feeding$;
    await feeder.close();
    assert.notEqual(a.instance, before.a.instance);
    assert.equal(a.session, before.a.session);
    assert.equal(a.transport, "sse");
    await say(alice.page, "back again");
    sent.push("alice: back again");
    const expected = [...sent, ...fed];
    await waitLines(alice.page, expected, 10000, "alice");
    await waitLines(bob.page, expected, 10000, "bob");
    for (const p of [alice, bob]) {
      const lines = await chatLines(p.page);
      assert.deepEqual([...lines].sort(), [...expected].sort(), `${p.name} shows every message exactly once`);
    }
    assert.deepEqual(await chatLines(alice.page), await chatLines(bob.page));
  });

  test("the pages logged no errors", () => {
    assert.deepEqual([...(alice?.errors ?? []), ...(bob?.errors ?? [])], []);
  });
});
