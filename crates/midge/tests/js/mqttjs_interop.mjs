// Interoperability scenarios for midge with the MQTT.js library (npm package `mqtt`, v5).
//
// Usage: node mqttjs_interop.mjs HOST PORT SCENARIO [--protocol 311|31]
//
// Scenarios: roundtrip (QoS 0, 1 and 2), retained, will. Each prints one `ok: ...` line
// per check that passed and exits 0; on the first failure it prints `FAIL: ...` to
// stderr and exits 1 (2 when MQTT.js is not installed). Every wait is bounded by
// TIMEOUT_MS. Run by crates/midge/tests/interop_mqttjs.rs; `npm ci` in this directory
// installs MQTT.js.

import { isDeepStrictEqual } from "node:util";

import { Failure, TIMEOUT_MS, loadMqtt, within } from "./support.mjs";

const PROTOCOLS = { 311: 4, 31: 3 };
const SCENARIOS = { roundtrip, retained, will };

const mqtt = await loadMqtt();

/** A connected MQTT.js client that queues the messages it receives. */
class Peer {
  constructor(name, client) {
    this.name = name;
    this.client = client;
    this.queue = [];
    this.waiting = null;
    client.on("message", (topic, payload, packet) => {
      const message = { topic, payload: payload.toString(), qos: packet.qos, retain: packet.retain };
      if (this.waiting) {
        const resolve = this.waiting;
        this.waiting = null;
        resolve(message);
      } else {
        this.queue.push(message);
      }
    });
  }

  static async connect(host, port, protocol, clientId, extra = {}) {
    const options = {
      host,
      port,
      clientId,
      protocolVersion: protocol,
      protocolId: protocol === 3 ? "MQIsdp" : "MQTT",
      clean: true,
      // One connection per client: a test must not be rescued by a reconnection.
      reconnectPeriod: 0,
      connectTimeout: TIMEOUT_MS,
      ...extra,
    };
    const client = await within(mqtt.connectAsync(options), `CONNACK for ${clientId}`);
    return new Peer(clientId, client);
  }

  async subscribe(topic, qos) {
    const granted = await within(this.client.subscribeAsync(topic, { qos }), `SUBACK for ${topic}`);
    if (granted.length !== 1 || granted[0].qos !== qos) {
      throw new Failure(`${this.name}: SUBSCRIBE ${topic} at QoS ${qos} granted ${JSON.stringify(granted)}`);
    }
    ok(`${this.name} subscribed to ${topic} at QoS ${qos}`);
  }

  /** Publishes; resolves once acknowledged (PUBACK, or PUBREC/PUBREL/PUBCOMP) or sent at QoS 0. */
  async publish(topic, payload, qos, retain = false) {
    await within(this.client.publishAsync(topic, payload, { qos, retain }), `acknowledgement of PUBLISH to ${topic}`);
  }

  message() {
    if (this.queue.length > 0) {
      return Promise.resolve(this.queue.shift());
    }
    return within(new Promise((resolve) => (this.waiting = resolve)), `PUBLISH for ${this.name}`);
  }

  async expect(want) {
    const got = await this.message();
    if (!isDeepStrictEqual(got, want)) {
      throw new Failure(`${this.name} expected ${JSON.stringify(want)}, got ${JSON.stringify(got)}`);
    }
    ok(`${this.name} received ${JSON.stringify(want)}`);
  }

  async end() {
    await within(this.client.endAsync(), `clean disconnection of ${this.name}`);
  }

  /** Closes the TCP connection without DISCONNECT, as a crashed client would. */
  drop() {
    this.client.stream.destroy();
  }
}

function ok(message) {
  console.log(`ok: ${message}`);
}

async function roundtrip(host, port, protocol, tag) {
  const sub = await Peer.connect(host, port, protocol, `mqttjs-sub-${tag}`);
  const pub = await Peer.connect(host, port, protocol, `mqttjs-pub-${tag}`);
  for (const qos of [0, 1, 2]) {
    const topic = `mqttjs/${tag}/qos${qos}`;
    await sub.subscribe(topic, qos);
    const payload = `round trip at QoS ${qos}`;
    await pub.publish(topic, payload, qos);
    await sub.expect({ topic, payload, qos, retain: false });
  }
  await sub.end();
  await pub.end();
}

async function retained(host, port, protocol, tag) {
  const topic = `mqttjs/${tag}/retained`;
  const pub = await Peer.connect(host, port, protocol, `mqttjs-pub-${tag}`);
  await pub.publish(topic, "kept for later", 1, true);
  await pub.end();

  const late = await Peer.connect(host, port, protocol, `mqttjs-late-${tag}`);
  await late.subscribe(`mqttjs/${tag}/+`, 1);
  await late.expect({ topic, payload: "kept for later", qos: 1, retain: true });
  await late.end();
}

async function will(host, port, protocol, tag) {
  const topic = `mqttjs/${tag}/will/dying`;
  const watcher = await Peer.connect(host, port, protocol, `mqttjs-watch-${tag}`);
  await watcher.subscribe(`mqttjs/${tag}/will/#`, 1);
  const dying = await Peer.connect(host, port, protocol, `mqttjs-dying-${tag}`, {
    will: { topic, payload: Buffer.from("connection lost"), qos: 1, retain: false },
  });

  dying.drop();

  await watcher.expect({ topic, payload: "connection lost", qos: 1, retain: false });
  await watcher.end();
}

function usage(message) {
  console.error(`FAIL: ${message}\nusage: node mqttjs_interop.mjs HOST PORT {${Object.keys(SCENARIOS).join("|")}} [--protocol 311|31]`);
  process.exit(1);
}

const [host, portText, scenario, ...rest] = process.argv.slice(2);
const port = Number(portText);
if (!host || !Number.isInteger(port) || !(scenario in SCENARIOS)) {
  usage("bad arguments");
}
let protocolName = "311";
if (rest.length > 0) {
  if (rest.length !== 2 || rest[0] !== "--protocol" || !(rest[1] in PROTOCOLS)) {
    usage(`bad options: ${rest.join(" ")}`);
  }
  protocolName = rest[1];
}

try {
  await SCENARIOS[scenario](host, port, PROTOCOLS[protocolName], `v${protocolName}`);
} catch (err) {
  const why = err instanceof Failure ? err.message : `error: ${err.stack ?? err}`;
  console.error(`FAIL: ${scenario} over MQTT ${protocolName}: ${why}`);
  process.exit(1);
}
console.log(`passed: ${scenario} over MQTT ${protocolName} (MQTT.js)`);
process.exit(0);
