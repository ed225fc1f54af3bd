// The demo page in a real browser (Debian's chromium driven by playwright-core)
// through nginx (deploy/nginx/nginx.conf, rendered by deploy/nginx/render.sh as
// docker-compose.yml does) in front of 3 demo instances on a private Redis.
// Two pages chat across two instances and see each other in presence; the
// instance of one page is killed with SIGKILL; both pages go on with every
// message exactly once. The counter-core steps run when the server has cores
// (until then `spawn` answers not_found and ONLY those steps are skipped, loudly).
//
// Screenshots: client/js/test/artifacts/*.png (git-ignored). With
// UPDATE_DOCS_SCREENSHOT=1 the laptop-sized page (both pages chatting, the
// shared counter) is also written to docs/images/demo.png (the README's picture).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync, mkdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import {
  chainedSteps, chatLines, freePort, launchChromium, openDemoPage, pageInfo, repoRoot, say, sleep, startFeeder, startNginx, startRedis,
  startServer, stopAll, waitConnected, waitFor, waitLines,
} from "./helpers.js";

const ARTIFACTS = path.join(path.dirname(fileURLToPath(import.meta.url)), "artifacts");
const DOCS_SCREENSHOT = path.join(repoRoot, "docs", "images", "demo.png");

// ------------------------------------------------------------ page helpers

function presenceList(page) {
  return page.evaluate(() => [...document.querySelectorAll("#presence li")].map((li) => li.textContent));
}

/** Clicks "Spawn & join"; resolves "ok", or the error shown (e.g. "not_found: …"). */
async function spawnAndJoin(page) {
  await page.click("#core-form button");
  await page.waitForFunction(() =>
    /runs on/.test(document.getElementById("core-info").textContent) || document.getElementById("core-error").textContent !== "",
  null, { timeout: 10000, polling: 20 });
  const error = await page.textContent("#core-error");
  return error === "" ? "ok" : error;
}

const counterValue = (page) => page.textContent("#counter-value");

async function shot(page, name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

// ------------------------------------------------------------------ the test

describe("the demo page in chromium, through nginx, 3 instances", { timeout: 120000 }, () => {
  let redis, nginx, browser;
  const instances = new Map(); // instance id -> process
  let alice, bob; // { page, context, errors }
  let coresMissing = null; // the spawn error when the server has no cores
  const sent = []; // every chat line sent, in send order per sender

  before(async () => {
    redis = await startRedis();
    for (let i = 1; i <= 3; i++) {
      const id = `browser-n${i}`;
      instances.set(id, await startServer({ scaler: redis.url, instanceId: id }));
    }
    nginx = await startNginx(await freePort(), [...instances.values()].map((p) => p.port));
    browser = await launchChromium();
  });

  after(async () => {
    await browser?.close();
    await stopAll([...instances.values()], redis);
    await nginx?.stop();
  });

  // The steps build on each other: once one fails, the rest fail at once.
  const step = chainedSteps(test);
  const openPage = (name, viewport) => openDemoPage(browser, nginx.url, name, { viewport });

  step("two pages connect, each to a different instance", async () => {
    alice = await openPage("alice", { width: 1280, height: 800 });
    bob = await openPage("bob", { width: 390, height: 844 }); // a phone
    const a = await waitConnected(alice.page);
    let b = await waitConnected(bob.page);
    assert.ok(instances.has(a.instance), `alice's page shows instance ${a.instance}`);
    // Round robin puts bob anywhere; open him anew (a new tab: a new
    // session) until he is on another instance than alice.
    for (let i = 0; i < 8 && b.instance === a.instance; i++) {
      await bob.context.close();
      bob = await openPage("bob", { width: 390, height: 844 });
      b = await waitConnected(bob.page);
    }
    assert.notEqual(b.instance, a.instance, "bob's page never landed on another instance than alice's");
    assert.ok(instances.has(b.instance));
    assert.match(a.client, /\S/);
    assert.match(a.session, /\S/);
    // Usable on a phone: nothing wider than the screen.
    const overflow = await bob.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `the page is ${overflow} px wider than a phone's screen`);
  });

  step("chat goes both ways across the two instances", async () => {
    const lines = [["alice", "hello from alice"], ["bob", "hi alice, bob here"], ["alice", "how is the weather?"]];
    for (const [who, text] of lines) {
      await say(who === "alice" ? alice.page : bob.page, text);
      sent.push(`${who}: ${text}`);
    }
    await waitLines(alice.page, sent, 5000, "alice");
    await waitLines(bob.page, sent, 5000, "bob");
    assert.deepEqual(await chatLines(alice.page), sent);
    assert.deepEqual(await chatLines(bob.page), sent);
  });

  step("each page sees both in presence", async () => {
    const a = await pageInfo(alice.page);
    const b = await pageInfo(bob.page);
    for (const [p, me, other] of [[alice, a, b], [bob, b, a]]) {
      // The page refreshes presence every 2 s; anonymous users show their client id.
      await waitFor(async () => {
        const list = await presenceList(p.page);
        return list.includes(`you: ${me.client}`) && list.includes(other.client);
      }, 6000, `${p.name}'s presence list to show both clients`);
    }
    await shot(alice.page, "01-alice-laptop");
    await shot(bob.page, "01-bob-phone");
  });

  step("the counter core is shared by both pages", async (t) => {
    const spawned = await spawnAndJoin(alice.page);
    if (/^not_found\b/.test(spawned)) {
      coresMissing = spawned;
      const msg = `COUNTER STEPS SKIPPED: the server has no cores yet (spawn answered "${spawned}"); they run as soon as spawn works`;
      console.warn(`\n*** ${msg} ***\n`);
      t.diagnostic(msg);
      t.skip(msg);
      return;
    }
    assert.equal(spawned, "ok", "alice's Spawn & join");
    assert.equal(await spawnAndJoin(bob.page), "ok", "bob's Spawn & join");
    const start = Number(await counterValue(alice.page));
    assert.ok(Number.isInteger(start), `counter shows a number, not ${await counterValue(alice.page)}`);
    for (let i = 0; i < 3; i++) await alice.page.click("#incr");
    for (const p of [alice, bob]) {
      await waitFor(async () => (await counterValue(p.page)) === String(start + 3), 5000, `${p.name}'s counter to reach ${start + 3}`);
    }
    await bob.page.click("#get");
    await bob.page.waitForFunction(() => /runs on \S+/.test(document.getElementById("core-info").textContent), null, { timeout: 5000 });
    const where = (await bob.page.textContent("#core-info")).match(/runs on (\S+)/)[1];
    assert.ok(instances.has(where), `the core runs on ${where}, one of the cluster's instances`);
    // The README's picture: chat, presence and the shared counter.
    const laptop = await shot(alice.page, "01b-alice-counter");
    if (process.env.UPDATE_DOCS_SCREENSHOT === "1") {
      mkdirSync(path.dirname(DOCS_SCREENSHOT), { recursive: true });
      copyFileSync(laptop, DOCS_SCREENSHOT);
    }
  });

  step("kill -9 of alice's instance: both pages go on, every message exactly once", async (t) => {
    const before = { a: await pageInfo(alice.page), b: await pageInfo(bob.page) };
    const victim = instances.get(before.a.instance);
    const survivor = instances.get(before.b.instance);
    // A steady publisher on bob's (surviving) instance, so messages are
    // published while alice is away and while she comes back.
    const feeder = await startFeeder(survivor.url, await alice.page.inputValue("#channel"));
    const fed = feeder.fed;
    await sleep(200);

    await victim.kill9();
    const killedAt = Date.now();
    const fedAtKill = fed.length;
    // Bob talks right away, while alice is (most likely) still away.
    for (let i = 1; i <= 3; i++) {
      await say(bob.page, `during outage ${i}`);
      sent.push(`bob: during outage ${i}`);
    }
    const a = await waitConnected(alice.page, 10000);
    const during = fed.length - fedAtKill;
    t.diagnostic(`alice's page connected and subscribed again ${Date.now() - killedAt} ms after the kill; ${during} feeder messages were published meanwhile`);
    assert.ok(during >= 1, "no message was published while alice was away: the test proved nothing");
    const b = await waitConnected(bob.page, 10000);
    assert.notEqual(a.instance, before.a.instance, "alice is back on a live instance");
    assert.ok(instances.has(a.instance));
    assert.equal(b.instance, before.b.instance, "bob stayed on his instance");
    const states = await alice.page.evaluate(() => window.__states);
    assert.ok(states.includes("disconnected") || states.includes("connecting"), `alice's page showed the outage: ${states.join(" > ")}`);
    assert.equal(a.session, before.a.session, "alice's page resumed its session");
    await sleep(200);
    await feeder.stop();

    await say(alice.page, "back again");
    sent.push("alice: back again");
    await say(bob.page, "welcome back");
    sent.push("bob: welcome back");

    const expected = [...sent, ...fed];
    assert.ok(fed.length >= 5, `the feeder published ${fed.length} messages`);
    await waitLines(alice.page, expected, 10000, "alice");
    await waitLines(bob.page, expected, 10000, "bob");
    for (const p of [alice, bob]) {
      const lines = await chatLines(p.page);
      const dup = lines.filter((l, i) => lines.indexOf(l) !== i);
      assert.deepEqual(dup, [], `${p.name} shows duplicates`);
      assert.deepEqual([...lines].sort(), [...expected].sort(), `${p.name} shows exactly the messages sent`);
      // Per sender, in send order.
      for (const who of ["alice", "bob", "feeder"]) {
        const mine = (l) => l.startsWith(`${who}: `);
        assert.deepEqual(lines.filter(mine), expected.filter(mine), `${p.name}: ${who}'s messages in order`);
      }
    }
    // Both pages show the one order of the channel.
    assert.deepEqual(await chatLines(alice.page), await chatLines(bob.page));
    // Presence: alice's new connection, and (once the dead instance's
    // registration expires, ~5 s) not her old one.
    const want = [a.client, `you: ${b.client}`].sort();
    await waitFor(async () => JSON.stringify((await presenceList(bob.page)).sort()) === JSON.stringify(want), 10000,
      `bob's presence list to be exactly ${want.join(", ")} (the killed instance's entries gone)`);

    await shot(alice.page, "02-alice-after-kill");
    await shot(bob.page, "02-bob-after-kill");
  });

  step("the counter core works after the kill", async (t) => {
    if (coresMissing) {
      const msg = `COUNTER STEPS SKIPPED: the server has no cores yet (spawn answered "${coresMissing}")`;
      t.diagnostic(msg);
      t.skip(msg);
      return;
    }
    // The core may have run on the killed instance: it is respawned within
    // 15 s (fresh state) and the pages rejoin it. Wait until bob's page says
    // it runs on a live instance, then both pages must follow one +1.
    const alive = [...instances].filter(([, p]) => p.alive).map(([id]) => id);
    await waitFor(async () => {
      await bob.page.click("#get");
      await sleep(300);
      const info = await bob.page.textContent("#core-info");
      const m = info.match(/runs on (\S+)/);
      return m && alive.includes(m[1]) && (await bob.page.textContent("#core-error")) === "";
    }, 20000, "the counter core to run on a live instance");
    const v = Number(await counterValue(bob.page));
    await alice.page.click("#incr");
    for (const p of [alice, bob]) {
      await waitFor(async () => (await counterValue(p.page)) === String(v + 1), 5000, `${p.name}'s counter to reach ${v + 1}`);
    }
  });

  test("a reloaded page resumes its session and its chat", async () => {
    const before = await pageInfo(alice.page);
    const shown = await chatLines(alice.page);
    await alice.page.reload();
    await alice.page.fill("#name", "alice");
    const after = await waitConnected(alice.page, 5000);
    assert.equal(after.session, before.session);
    assert.equal(after.resumed, "true");
    await say(alice.page, "reloaded");
    await waitLines(bob.page, ["alice: reloaded"], 5000, "bob");
    await waitLines(alice.page, ["alice: reloaded"], 5000, "alice (whose message bob got)");
    assert.ok(shown.length > 0);
  });

  test("the pages logged no errors", () => {
    assert.deepEqual([...alice.errors, ...bob.errors], []);
  });
});
