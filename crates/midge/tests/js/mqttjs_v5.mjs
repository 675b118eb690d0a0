// MQTT 5 scenarios for midge with MQTT.js (npm package `mqtt`, v5).
//
// Usage: node mqttjs_v5.mjs HOST PORT SCENARIO
//
// Prints `ok: ...` per check and `passed: SCENARIO`, or `FAIL: ...` on stderr and
// exits 1. Every wait is bounded. Run by crates/midge/tests/interop_mqttjs.rs.

import { check, loadMqtt, within } from "./support.mjs";

const mqtt = await loadMqtt();

function connect(host, port, options = {}) {
  const client = mqtt.connect({ host, port, protocolVersion: 5, reconnectPeriod: 0, ...options });
  return within(new Promise((resolve, reject) => {
    client.once("connect", (connack) => resolve({ client, connack }));
    client.once("error", reject);
  }), "CONNACK");
}

/** Collects `count` messages as [topic, payload, packet]. */
function collect(client, count) {
  const got = [];
  return within(new Promise((resolve) => {
    client.on("message", (topic, payload, packet) => {
      got.push([topic, payload.toString(), packet]);
      if (got.length === count) resolve(got);
    });
  }), `${count} messages`);
}

async function topicAliases(host, port) {
  const base = `js5/${Math.random().toString(16).slice(2, 10)}`;
  const { client: sub } = await connect(host, port, { properties: { topicAliasMaximum: 5 } });
  await sub.subscribeAsync(`${base}/#`, { qos: 1 });
  const incoming = collect(sub, 4);
  const { client: pub, connack } = await connect(host, port);
  const maximum = connack.properties?.topicAliasMaximum ?? 0;
  check(maximum >= 1, `CONNACK announces a Topic Alias Maximum (${maximum})`);
  // The publisher sets alias 1 once, then publishes with the alias alone.
  await pub.publishAsync(`${base}/a`, "first", { qos: 1, properties: { topicAlias: 1 } });
  await pub.publishAsync("", "by alias", { qos: 1, properties: { topicAlias: 1 } });
  await pub.publishAsync(`${base}/a`, "third", { qos: 1 });
  await pub.publishAsync(`${base}/a`, "fourth", { qos: 1 });
  const got = await incoming;
  check(got.every(([topic]) => topic === `${base}/a`), "an inbound alias resolves to the topic it was set for");
  check(got[1][1] === "by alias", "a PUBLISH with only the alias is delivered");
  const aliases = got.map(([, , packet]) => packet.properties?.topicAlias);
  check(aliases.every((a) => a === aliases[0] && a >= 1 && a <= 5), `the broker sends aliases within the client's maximum (${aliases})`);
  const emptyTopics = got.slice(1).filter(([, , packet]) => packet.topic === "").length;
  check(emptyTopics === 3, `later packets carry the alias without the topic (${emptyTopics} of 3)`);
  sub.end(true);
  pub.end(true);
}

const SCENARIOS = { topic_aliases: topicAliases };

const [host, port, scenario] = process.argv.slice(2);
try {
  await SCENARIOS[scenario](host, Number(port));
  console.log(`passed: ${scenario}`);
  process.exit(0);
} catch (err) {
  console.error(`FAIL: ${err.message}`);
  process.exit(1);
}
