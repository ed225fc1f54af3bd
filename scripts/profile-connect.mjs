// Connect + subscribe load for profiling one server instance
// (scripts/profile-connect): N clients with HS256 tokens (users user-i,
// signed with SECRET), IN_FLIGHT at once, each subscribing room-(i % 100)
// after its welcome and kept open. The first 200 are a warm-up; BEFORE runs
// (via sh) before the measured connects and AFTER once they are done. Prints
// one JSON line: connects, seconds, rate.
//
//   node --experimental-websocket scripts/profile-connect.mjs PORT N IN_FLIGHT SECRET [BEFORE] [AFTER]
import { createHmac } from "node:crypto";
import { execSync } from "node:child_process";
const [port, n, inflight, secret, before, after] = [process.argv[2], +process.argv[3], +process.argv[4], process.argv[5], process.argv[6] || "", process.argv[7] || ""];
const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
const jwt = (sub) => { const h = b64({alg:"HS256",typ:"JWT"}), p = b64({sub, exp: Math.floor(Date.now()/1000)+3600, channels:["*"], publish:["*"]}); return `${h}.${p}.${createHmac("sha256", secret).update(`${h}.${p}`).digest("base64url")}`; };
const tokens = Array.from({length:n}, (_, i) => jwt(`user-${i}`));
const open = [];
function one(i) {
  return new Promise((res, rej) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`);
    ws.onopen = () => ws.send(JSON.stringify({type:"connect", token: tokens[i]}));
    ws.onmessage = (ev) => { const f = JSON.parse(ev.data);
      if (f.type === "welcome") ws.send(JSON.stringify({type:"subscribe", id:1, channel:`room-${i%100}`}));
      else if (f.type === "reply" && f.id === 1) { open.push(ws); res(); }
      else if (f.type === "error") rej(new Error(ev.data)); };
    ws.onerror = (e) => rej(new Error("ws error")); });
}
// warm-up: 200 clients not measured
let next = 0;
async function run(count) { const end = next + count; const workers = Array.from({length: inflight}, async () => { while (next < end) { const i = next++; await one(i); } }); await Promise.all(workers); }
await run(200);
if (before) execSync(before, {stdio:"inherit"});
const t0 = Date.now(); await run(n - 200); const s = (Date.now()-t0)/1000;
if (after) execSync(after, {stdio:"inherit"});
console.log(JSON.stringify({connects: n-200, seconds: s, rate: (n-200)/s}));
for (const ws of open) ws.close();
process.exit(0);
