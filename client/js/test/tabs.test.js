// Tabs of one browser share a session: two Chromium tabs of one origin (one
// browser context, so one localStorage) through nginx in front of two demo
// instances on a private Redis. With the client's default
// `persistSession: "local"`, the second tab joins the first tab's session; a
// tell to the session reaches both, session data written in one is read in the
// other, and closing one tab leaves the other's session working.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { freePort, launchChromium, sleep, startNginx, startRedis, startServer, stopAll, waitFor } from "./helpers.js";

const API_KEY = "tabs-test-key";

describe("two tabs of one browser share a session", { timeout: 90000 }, () => {
  let redis, nginx, browser, context;
  const instances = [];
  const errors = [];

  before(async () => {
    redis = await startRedis();
    for (let i = 1; i <= 2; i++) {
      instances.push(await startServer({ scaler: redis.url, instanceId: `tabs-n${i}`, args: ["--api-key", API_KEY] }));
    }
    nginx = await startNginx(await freePort(), instances.map((p) => p.port));
    browser = await launchChromium();
    context = await browser.newContext();
    context.setDefaultTimeout(10000);
  });

  after(async () => {
    await browser?.close();
    await nginx?.stop();
    await stopAll(instances, redis);
  });

  /** A new tab with a connected client (default options); resolves {page, welcome}. */
  async function openTab() {
    const page = await context.newPage();
    page.on("pageerror", (e) => errors.push(`uncaught: ${e.message}`));
    // A plain page of the cluster's origin, served from loopback (the demo
    // page would start a client of its own; a page made up by the test
    // driver would not count as loopback, and Chromium's local network
    // checks would block its WebSocket). The module comes from the server.
    await page.goto(`${nginx.url}/healthz`);
    const welcome = await page.evaluate(async () => {
      const { Client } = await import("/scaled-sockets.js");
      const client = new Client(location.origin);
      window.__tells = [];
      client.on("tell", (event, data) => window.__tells.push({ event, data }));
      window.__client = client;
      return await client.connect();
    });
    return { page, welcome };
  }

  const ask = (tab, event, data) => tab.page.evaluate(([e, d]) => window.__client.ask(e, d), [event, data]);
  const tells = (tab) => tab.page.evaluate(() => window.__tells);

  async function tellSession(session, data) {
    // Through an instance's HTTP API, as an app backend would.
    const res = await fetch(`${instances[0].url}/api/tell`, {
      method: "POST",
      headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
      body: JSON.stringify({ session, event: "note", data }),
    });
    assert.equal(res.status, 200, await res.text());
  }

  let one, two;

  test("the second tab joins the first tab's session", async () => {
    one = await openTab();
    two = await openTab();
    assert.equal(two.welcome.session, one.welcome.session);
    assert.notEqual(two.welcome.client, one.welcome.client);
    // A live session is joined (the first tab's subscriptions stay its own).
    assert.equal(two.welcome.resumed, true);
    const stored = await two.page.evaluate(() => Object.entries(localStorage));
    assert.deepEqual(stored.map(([, v]) => v), [one.welcome.session]);
  });

  test("a tell to the session reaches both tabs", async () => {
    await tellSession(one.welcome.session, { n: 1 });
    for (const tab of [one, two]) {
      await waitFor(async () => (await tells(tab)).some((t) => t.event === "note" && t.data.n === 1), 5000, "the tell in each tab");
    }
  });

  test("session data set in one tab is read in the other", async () => {
    assert.deepEqual(await ask(one, "session_set", { key: "cart", value: { items: [1, 2] } }), {});
    assert.deepEqual(await ask(two, "session_get", { key: "cart" }), { value: { items: [1, 2] } });
    assert.deepEqual(await ask(two, "session_set", { key: "theme", value: "dark" }), {});
    assert.deepEqual(await ask(one, "session_get", { key: "theme" }), { value: "dark" });
  });

  test("closing one tab leaves the other's session working", async () => {
    await one.page.close();
    await sleep(300);
    const state = await two.page.evaluate(() => [window.__client.state, window.__client.session]);
    assert.deepEqual(state, ["connected", one.welcome.session]);
    assert.deepEqual(await ask(two, "session_get", { key: "cart" }), { value: { items: [1, 2] } });
    await tellSession(one.welcome.session, { n: 2 });
    await waitFor(async () => (await tells(two)).some((t) => t.event === "note" && t.data.n === 2), 5000, "the tell in the open tab");
    // A tab opened now joins the same session, with its data.
    const three = await openTab();
    assert.equal(three.welcome.session, one.welcome.session);
    assert.equal(three.welcome.resumed, true, "the session's data came back");
    assert.deepEqual(await ask(three, "session_get", { key: "theme" }), { value: "dark" });
  });

  test("the tabs logged no errors", () => {
    assert.deepEqual(errors, []);
  });
});
