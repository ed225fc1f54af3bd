// A small fixed fan-out workload for profiling one server instance (ours or
// the bench's floor) under strace / callgrind: `--subs` subscribers on one
// channel, one publisher sending `--messages` publishes with `--in-flight`
// outstanding, then waits until every subscriber got every message.
// `--before CMD` runs (synchronously, via sh) after setup and before the
// first publish; `--after CMD` after the last delivery: use them to start and
// stop a profiler so that only the fan-out is measured.
// Prints one JSON line: deliveries, publishes, seconds.
//
//   node --experimental-websocket scripts/profile-load.mjs --port 8080 \
//     --subs 200 --messages 2000 --in-flight 64
// Needs Node 20.10+ (its experimental WebSocket client); Node 22+ needs no flag.
import { execSync } from "node:child_process";

const args = { port: 0, subs: 200, messages: 2000, "in-flight": 64, before: "", after: "", timeout: 600 };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  const key = argv[i].replace(/^--/, "");
  if (!(key in args) || argv[i + 1] === undefined) {
    console.error(`profile-load: unknown or valueless flag ${argv[i]}`);
    process.exit(2);
  }
  args[key] = typeof args[key] === "number" ? Number(argv[i + 1]) : argv[i + 1];
}
if (!args.port) {
  console.error("profile-load: --port is required");
  process.exit(2);
}
if (typeof WebSocket === "undefined") {
  console.error("profile-load: no global WebSocket; run node with --experimental-websocket (Node 20.10+)");
  process.exit(2);
}
const CHANNEL = "fanout";
const url = `ws://127.0.0.1:${args.port}/ws`;

function open() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.onerror = (e) => reject(new Error(`connect ${url}: ${e.message ?? e}`));
    ws.onopen = () => resolve(ws);
  });
}

// Sends `frame` and resolves with the first frame `pick` accepts.
function request(ws, frame, pick) {
  return new Promise((resolve, reject) => {
    ws.onmessage = (ev) => {
      const v = JSON.parse(ev.data);
      if (v.type === "error") reject(new Error(`refused: ${ev.data}`));
      else if (pick(v)) resolve(v);
    };
    ws.send(JSON.stringify(frame));
  });
}

async function client(subscribe) {
  const ws = await open();
  await request(ws, { type: "connect" }, (v) => v.type === "welcome");
  if (subscribe) {
    await request(ws, { type: "subscribe", id: 1, channel: CHANNEL }, (v) => v.type === "reply" && v.id === 1);
  }
  return ws;
}

const expected = args.subs * args.messages;
let delivered = 0;
let finish;
const allDelivered = new Promise((r) => (finish = r));
const subs = [];
for (let i = 0; i < args.subs; i += 50) {
  const batch = await Promise.all(Array.from({ length: Math.min(50, args.subs - i) }, () => client(true)));
  subs.push(...batch);
}
for (const ws of subs) {
  ws.onmessage = (ev) => {
    if (ev.data.includes('"type":"message"') && ++delivered === expected) finish();
  };
}
const pub = await client(false);
if (args.before) execSync(args.before, { stdio: "inherit", shell: "/bin/sh" });

const pad = "x".repeat(64);
const start = process.hrtime.bigint();
let sent = 0;
let acked = 0;
const send = () => {
  sent += 1;
  const t = Number(process.hrtime.bigint() / 1000n);
  pub.send(`{"type":"publish","id":${sent},"channel":"${CHANNEL}","data":{"t":${t},"p":"${pad}"}}`);
};
pub.onmessage = (ev) => {
  if (!ev.data.includes('"type":"reply"')) {
    if (ev.data.includes('"type":"error"')) console.error(`publish error: ${ev.data}`);
    return;
  }
  acked += 1;
  if (sent < args.messages) send();
};
while (sent < Math.min(args["in-flight"], args.messages)) send();
const timer = setTimeout(() => {
  console.error(`profile-load: timeout: ${delivered} of ${expected} delivered, ${acked} of ${args.messages} acked`);
  process.exit(1);
}, args.timeout * 1000);
await allDelivered;
clearTimeout(timer);
const seconds = Number(process.hrtime.bigint() - start) / 1e9;
if (args.after) execSync(args.after, { stdio: "inherit", shell: "/bin/sh" });
console.log(JSON.stringify({ deliveries: delivered, publishes: args.messages, subscribers: args.subs, seconds }));
for (const ws of [...subs, pub]) ws.close();
process.exit(0);
