// The load generator of relay's benchmark (scripts/bench): one process driving many WebSocket clients.
//
//   node loadgen.js CONFIG.json
//
// CONFIG: {"mode": "relay"|"reference", "url": "ws://host:port/v1/ws", "server_key": b64,
//          "devices": [{"user_id", "device_id", "seed"}], "phase": "saturate"|"rate"|"idle"|"handshakes"|"replay",
//          "start_at": epoch ms, "seconds": s, "window": n, "rate_per_device": per s, "stream": name,
//          "concurrency": n, "expected": n}
// It connects and authenticates every device (relay: the real handshake of PROTOCOL.md §4.1, with
// Ed25519 from Node's crypto; reference: a bare hello), waits until start_at, runs the phase for
// `seconds`, and prints one JSON line of results on stdout: counts, latency histograms (10 µs buckets to 10 ms, then ~9 % wide)
// and its own CPU time, so the orchestrator can tell whether the load generator was the bottleneck.
"use strict";

const crypto = require("crypto");
const fs = require("fs");
const WebSocket = require("ws");

const config = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const PKCS8 = Buffer.from("302e020100300506032b657004220420", "hex");
const SPKI = Buffer.from("302a300506032b6570032100", "hex");
// Latency buckets: 10 µs wide up to 10 ms, then 8 per power of two (about 9 % wide) up to ~2,800 s.
const FINE_US = 10;
const FINE = 1000;
const BUCKETS = FINE + 8 * 28;
function bucketOf(us) {
  if (us < FINE * FINE_US) return Math.floor(us / FINE_US);
  return Math.min(BUCKETS - 1, FINE + Math.floor(8 * Math.log2(us / (FINE * FINE_US))));
}

function b64(buffer) { return Buffer.from(buffer).toString("base64url"); }
function unb64(text) { return Buffer.from(text, "base64url"); }
function nowNs() { return process.hrtime.bigint(); }

class Histogram {
  constructor() { this.counts = new Uint32Array(BUCKETS); this.max = 0; this.n = 0; }
  add(us) {
    this.counts[bucketOf(us)] += 1; this.n += 1; if (us > this.max) this.max = us;
  }
  toJSON() {
    const sparse = {};
    this.counts.forEach((c, i) => { if (c) sparse[i] = c; });
    return { fine_us: FINE_US, fine: FINE, counts: sparse, max_us: this.max, n: this.n };
  }
}

// Event ids must never repeat across phases and processes (a reused id with another body is id_conflict).
const RUN = crypto.randomBytes(6).toString("hex");

const serverKey = config.server_key
  ? crypto.createPublicKey({ key: Buffer.concat([SPKI, unb64(config.server_key)]), format: "der", type: "spki" })
  : null;

class Device {
  constructor(spec, stats) {
    this.spec = spec; this.stats = stats;
    this.key = config.mode === "relay"
      ? crypto.createPrivateKey({ key: Buffer.concat([PKCS8, unb64(spec.seed)]), format: "der", type: "pkcs8" })
      : null;
    this.inflight = new Map(); this.n = 0; this.onAck = null; this.onPage = null;
  }

  open() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(config.url, config.mode === "relay" ? ["relay.v1"] : [], { perMessageDeflate: false });
      this.ws = ws;
      let nonce = null;
      ws.on("error", reject);
      ws.on("open", () => {
        if (config.mode === "relay") {
          nonce = b64(crypto.randomBytes(32));
          ws.send(JSON.stringify({ type: "hello", v: 1, device_id: this.spec.device_id, nonce }));
        } else {
          ws.send(JSON.stringify({ type: "hello", user: this.spec.user_id, device: this.spec.device_id }));
        }
      });
      ws.on("message", (data) => {
        const msg = JSON.parse(data);
        switch (msg.type) {
          case "challenge": {
            const hello = `relay-server-hello-v1\n${msg.session_id}\n${nonce}\n${msg.nonce}`;
            if (!crypto.verify(null, Buffer.from(hello), serverKey, unb64(msg.server_sig))) {
              reject(new Error("the server's challenge does not verify")); return;
            }
            const signed = `relay-client-auth-v1\n${msg.session_id}\n${this.spec.device_id}\n${nonce}\n${msg.nonce}`;
            ws.send(JSON.stringify({ type: "auth", sig: b64(crypto.sign(null, Buffer.from(signed), this.key)) }));
            break;
          }
          case "welcome": resolve(this); break;
          case "ack": this.ack(msg); break;
          case "event": this.event(msg); break;
          case "replay.page": if (this.onPage) this.onPage(msg); break;
          case "error": this.stats.errors[msg.code] = (this.stats.errors[msg.code] || 0) + 1;
            if (this.inflight.has(msg.ref)) { this.inflight.delete(msg.ref); if (this.onAck) this.onAck(); }
            break;
          default: break;
        }
      });
      ws.on("close", () => { this.closed = true; });
    });
  }

  publish(stream) {
    const id = `${RUN}-${this.spec.device_id.slice(0, 8)}-${this.n++}`;
    const sent = nowNs();
    this.inflight.set(id, sent);
    const body = { t: sent.toString(), pad: "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" };
    this.ws.send(JSON.stringify({ type: "publish", id, stream, ts: Date.now(), body, ref: id }));
  }

  ack(msg) {
    const sent = this.inflight.get(msg.ref);
    if (sent === undefined) return;
    this.inflight.delete(msg.ref);
    if (this.stats.measuring) { this.stats.acks += 1; this.stats.ack.add(Number(nowNs() - sent) / 1000); }
    if (this.onAck) this.onAck();
  }

  event(msg) {
    if (!this.stats.measuring || !msg.body || msg.body.t === undefined) return;
    this.stats.deliveries += 1;
    this.stats.delivery.add(Number(nowNs() - BigInt(msg.body.t)) / 1000);
  }
}

function newStats() {
  return { acks: 0, deliveries: 0, errors: {}, measuring: false, ack: new Histogram(), delivery: new Histogram() };
}

async function openAll(devices, stats, concurrency = 50) {
  const out = [];
  let next = 0;
  async function worker() {
    while (next < devices.length) {
      const spec = devices[next++];
      out.push(await new Device(spec, stats).open());
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, devices.length) }, worker));
  return out;
}

function waitUntil(epochMs) { return new Promise((r) => setTimeout(r, Math.max(0, epochMs - Date.now()))); }
function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }

function cpuSeconds() { const u = process.cpuUsage(); return (u.user + u.system) / 1e6; }

async function main() {
  const stats = newStats();
  const result = { phase: config.phase, devices: config.devices.length };
  if (config.phase === "handshakes") {
    await waitUntil(config.start_at);
    const cpu0 = cpuSeconds();
    const end = Date.now() + config.seconds * 1000;
    let done = 0;
    async function loop(i) {
      while (Date.now() < end) {
        const device = await new Device(config.devices[i % config.devices.length], stats).open();
        done += 1;
        device.ws.close();
      }
    }
    await Promise.all(Array.from({ length: config.concurrency || 20 }, (_, i) => loop(i)));
    Object.assign(result, { handshakes: done, cpu_s: cpuSeconds() - cpu0 });
    process.stdout.write(JSON.stringify(result) + "\n");
    process.exit(0);
  }
  const devices = await openAll(config.devices, stats);
  process.stdout.write(JSON.stringify({ ready: true }) + "\n");
  await waitUntil(config.start_at);
  const cpu0 = cpuSeconds();
  const started = Date.now();
  const end = started + config.seconds * 1000;
  if (config.phase === "saturate") {
    stats.measuring = true;
    for (const device of devices) {
      device.onAck = () => { if (Date.now() < end && !device.closed) device.publish(config.stream || "bench"); };
      for (let i = 0; i < (config.window || 8); i += 1) device.publish(config.stream || "bench");
    }
    await sleep(config.seconds * 1000);
    stats.measuring = false;
  } else if (config.phase === "rate") {
    stats.measuring = true;
    if (config.report_every) {  // the soak: a line of figures every report_every seconds, then reset
      let index = 0;
      let last = cpuSeconds();
      const timer = setInterval(() => {
        const cpu = cpuSeconds();
        process.stdout.write(JSON.stringify({
          interval: index++, acks: stats.acks, deliveries: stats.deliveries, errors: stats.errors,
          ack: stats.ack.toJSON(), delivery: stats.delivery.toJSON(), cpu_s: cpu - last,
          closed: devices.filter((d) => d.closed).length,
        }) + "\n");
        last = cpu;
        stats.acks = 0; stats.deliveries = 0; stats.errors = {};
        stats.ack = new Histogram(); stats.delivery = new Histogram();
      }, config.report_every * 1000);
      setTimeout(() => clearInterval(timer), config.seconds * 1000 + 100);
    }
    const interval = 1000 / config.rate_per_device;
    devices.forEach((device, i) => {
      const first = (i / devices.length) * interval;
      setTimeout(function tick() {
        if (Date.now() >= end || device.closed) return;
        device.publish(config.stream || "bench");
        setTimeout(tick, interval);
      }, first);
    });
    await sleep(config.seconds * 1000);
    stats.measuring = false;
  } else if (config.phase === "idle") {
    await sleep(config.seconds * 1000);
  } else if (config.phase === "replay") {
    const device = devices[0];
    let count = 0;
    const t0 = nowNs();
    await new Promise((resolve) => {
      device.onPage = (page) => {
        count += page.events.length;
        if (page.next) device.ws.send(JSON.stringify({ type: "replay.next", token: page.next, ref: "r" }));
        else resolve();
      };
      device.ws.send(JSON.stringify({ type: "replay", stream: config.stream, ref: "r" }));
    });
    result.replayed = count;
    result.replay_s = Number(nowNs() - t0) / 1e9;
  }
  await sleep(300); // the last deliveries in flight (not counted: measuring is off)
  Object.assign(result, {
    seconds: (Math.min(Date.now(), end) - started) / 1000,
    acks: stats.acks, deliveries: stats.deliveries, errors: stats.errors,
    ack: stats.ack.toJSON(), delivery: stats.delivery.toJSON(), cpu_s: cpuSeconds() - cpu0,
  });
  process.stdout.write(JSON.stringify(result) + "\n");
  for (const device of devices) device.ws.terminate();
  process.exit(0);
}

main().catch((err) => { process.stderr.write(`${err.stack || err}\n`); process.exit(1); });
