// Shared by the MQTT.js scenario scripts: loading MQTT.js, bounded waits and checks.

/** How long a scenario waits for anything that should happen. */
export const TIMEOUT_MS = 15_000;

/** A check that did not hold; the message says what was expected and what came. */
export class Failure extends Error {}

/** MQTT.js, or exit 2 with a message saying how to install it. */
export async function loadMqtt() {
  try {
    return (await import("mqtt")).default;
  } catch (err) {
    console.error(`FAIL: cannot load MQTT.js (${err.message}); run ./scripts/test, which installs MQTT.js (npm ci in crates/midge/tests/js)`);
    process.exit(2);
  }
}

/** Resolves as `promise` does, or rejects with a Failure naming `what` after TIMEOUT_MS. */
export function within(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Failure(`no ${what} within ${TIMEOUT_MS} ms`)), TIMEOUT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Throws a Failure unless `condition`; prints `ok: message` when it holds. */
export function check(condition, message) {
  if (!condition) throw new Failure(message);
  console.log(`ok: ${message}`);
}
