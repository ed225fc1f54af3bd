// The demo page in headless Chromium (Debian's chromium driven by
// playwright-core) through nginx configured to refuse WebSocket upgrades, in
// front of 3 demo instances on a private Redis: the page falls back to the
// HTTP transport by itself; chat, presence and the counter core work; the
// instance of one page's stream is killed and the page resumes on another with
// every message exactly once.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import {
  chainedSteps, chatLines, freePort, launchChromium, openDemoPage, pageInfo, say, sleep, startFeeder, startNginx, startRedis, startServer,
  stopAll, waitConnected, waitFor, waitLines,
} from "./helpers.js";

describe("the demo page in chromium over the HTTP fallback (nginx refuses WebSockets)", { timeout: 120000 }, () => {
  let redis, nginx, browser;
  const instances = new Map();
  let alice, bob;
  const sent = [];

  before(async () => {
    redis = await startRedis();
    for (let i = 1; i <= 3; i++) {
      const id = `bsse-n${i}`;
      instances.set(id, await startServer({ scaler: redis.url, instanceId: id }));
    }
    nginx = await startNginx(await freePort(), [...instances.values()].map((p) => p.port), { refuseUpgrades: true });
    browser = await launchChromium();
  });

  after(async () => {
    await browser?.close();
    await stopAll([...instances.values()], redis);
    await nginx?.stop();
  });

  const step = chainedSteps(test);
  // Expected, and logged by Chromium: the refused WebSocket, and the stream
  // cut when its instance is killed. Anything else is not.
  const expectedConsoleErrors = /WebSocket connection to .* failed|ERR_INCOMPLETE_CHUNKED_ENCODING/;
  const openPage = (name) => openDemoPage(browser, nginx.url, name, { expectedConsoleErrors });

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
    const feeder = await startFeeder(survivor.url, await alice.page.inputValue("#channel"));
    const fed = feeder.fed;
    await sleep(200);
    await victim.kill9();
    await say(bob.page, "during outage");
    sent.push("bob: during outage");
    await sleep(300);
    const a = await waitConnected(alice.page, 10000);
    await feeder.stop();
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
