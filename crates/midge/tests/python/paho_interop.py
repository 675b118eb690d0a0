#!/usr/bin/env python3
"""Interoperability scenarios for midge with the Eclipse Paho Python client (paho-mqtt 2.x).

Usage: python3 paho_interop.py HOST PORT SCENARIO [--protocol 311|31]

Scenarios: roundtrip, retained, will, persistent. Each prints one `ok: ...` line per
check that passed and exits 0; on the first failure it prints `FAIL: ...` to stderr and
exits 1 (2 when paho-mqtt is missing or too old). Every wait is bounded by TIMEOUT.
Run by crates/midge/tests/interop_paho.rs.
"""

import argparse
import queue
import socket
import sys
import threading

try:
    import paho.mqtt
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
except ImportError as err:
    print(f"FAIL: cannot import paho-mqtt ({err}); run ./scripts/test, which installs paho-mqtt>=2,<3", file=sys.stderr)
    sys.exit(2)

if not paho.mqtt.__version__.startswith("2."):
    print(
        f"FAIL: paho-mqtt {paho.mqtt.__version__} is installed, these scenarios need 2.x; "
        "run ./scripts/test, which installs paho-mqtt>=2,<3",
        file=sys.stderr,
    )
    sys.exit(2)

TIMEOUT = 15.0
PROTOCOLS = {"311": mqtt.MQTTv311, "31": mqtt.MQTTv31}


class Failure(Exception):
    """A check that did not hold; the message says what was expected and what came."""


def check(condition, message):
    if not condition:
        raise Failure(message)
    print(f"ok: {message}", flush=True)


class Peer:
    """A paho client running its network loop on a thread, whose callbacks feed queues
    that the scenario reads with a time limit."""

    def __init__(self, host, port, client_id, protocol, clean_session=True):
        self.host, self.port, self.name = host, port, client_id
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=protocol,
            reconnect_on_failure=False,
        )
        self.connacks = queue.Queue()
        self.subacks = queue.Queue()
        self.messages = queue.Queue()
        self.disconnected = threading.Event()
        self.client.on_connect = lambda c, u, flags, rc, props: self.connacks.put((flags.session_present, rc))
        self.client.on_subscribe = lambda c, u, mid, codes, props: self.subacks.put((mid, codes))
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)
        self.client.on_disconnect = lambda c, u, flags, rc, props: self.disconnected.set()

    def will(self, topic, payload, qos, retain=False):
        self.client.will_set(topic, payload, qos=qos, retain=retain)
        return self

    def connect(self):
        """Connects and returns the CONNACK's session-present flag."""
        self.client.connect(self.host, self.port, keepalive=60)
        self.client.loop_start()
        session_present, rc = self.wait(self.connacks, "CONNACK")
        if rc.is_failure:
            raise Failure(f"{self.name}: connection refused: {rc}")
        return session_present

    def wait(self, source, what):
        try:
            return source.get(timeout=TIMEOUT)
        except queue.Empty:
            raise Failure(f"{self.name}: no {what} within {TIMEOUT} s") from None

    def subscribe(self, topic, qos):
        """Subscribes and returns the granted QoS."""
        result, mid = self.client.subscribe(topic, qos)
        if result != mqtt.MQTT_ERR_SUCCESS:
            raise Failure(f"{self.name}: cannot send SUBSCRIBE: {mqtt.error_string(result)}")
        got_mid, codes = self.wait(self.subacks, "SUBACK")
        if got_mid != mid or len(codes) != 1 or codes[0].is_failure:
            raise Failure(f"{self.name}: SUBSCRIBE {topic!r} (mid {mid}) answered with mid {got_mid}, codes {codes}")
        return codes[0].value

    def publish(self, topic, payload, qos, retain=False):
        """Publishes and waits until the broker acknowledged it (or it was sent, at QoS 0)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=TIMEOUT)
        if not info.is_published():
            raise Failure(f"{self.name}: PUBLISH to {topic!r} at QoS {qos} not acknowledged within {TIMEOUT} s")

    def message(self):
        return self.wait(self.messages, "PUBLISH")

    def disconnect(self):
        """Sends DISCONNECT and stops the network loop."""
        self.client.disconnect()
        if not self.disconnected.wait(TIMEOUT):
            raise Failure(f"{self.name}: not disconnected within {TIMEOUT} s")
        self.client.loop_stop()

    def drop(self):
        """Closes the TCP connection without DISCONNECT, as a crashed client would."""
        self.client.loop_stop()
        sock = self.client.socket()
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()


def expect_message(peer, topic, payload, qos, retain):
    msg = peer.message()
    got = (msg.topic, msg.payload, msg.qos, bool(msg.retain))
    want = (topic, payload, qos, retain)
    if got != want:
        raise Failure(f"{peer.name} expected (topic, payload, qos, retain) = {want}, got {got}")
    print(f"ok: {peer.name} received (topic, payload, qos, retain) = {want}", flush=True)


def roundtrip(host, port, protocol, tag):
    sub = Peer(host, port, f"paho-sub-{tag}", protocol)
    pub = Peer(host, port, f"paho-pub-{tag}", protocol)
    sub.connect()
    pub.connect()
    for qos in (0, 1, 2):
        topic = f"paho/{tag}/qos{qos}"
        granted = sub.subscribe(topic, qos)
        check(granted == qos, f"SUBSCRIBE at QoS {qos} granted QoS {qos} (got {granted})")
        payload = f"round trip at QoS {qos}".encode()
        pub.publish(topic, payload, qos)
        expect_message(sub, topic, payload, qos, False)
    sub.disconnect()
    pub.disconnect()


def retained(host, port, protocol, tag):
    pub = Peer(host, port, f"paho-pub-{tag}", protocol)
    pub.connect()
    topic = f"paho/{tag}/retained"
    pub.publish(topic, b"kept for later", 1, retain=True)
    pub.disconnect()

    late = Peer(host, port, f"paho-late-{tag}", protocol)
    late.connect()
    late.subscribe(f"paho/{tag}/+", 1)
    expect_message(late, topic, b"kept for later", 1, True)
    late.disconnect()


def will(host, port, protocol, tag):
    watcher = Peer(host, port, f"paho-watch-{tag}", protocol)
    watcher.connect()
    watcher.subscribe(f"paho/{tag}/will/#", 1)
    topic = f"paho/{tag}/will/dying"
    dying = Peer(host, port, f"paho-dying-{tag}", protocol).will(topic, b"connection lost", 1)
    dying.connect()

    dying.drop()

    expect_message(watcher, topic, b"connection lost", 1, False)
    watcher.disconnect()


def persistent(host, port, protocol, tag):
    client_id = f"paho-keep-{tag}"
    topic = f"paho/{tag}/queue"
    keeper = Peer(host, port, client_id, protocol, clean_session=False)
    session_present = keeper.connect()
    check(session_present is False, f"a new persistent session reports session_present=False (got {session_present})")
    keeper.subscribe(topic, 1)
    keeper.disconnect()

    pub = Peer(host, port, f"paho-pub-{tag}", protocol)
    pub.connect()
    payloads = [f"queued {n}".encode() for n in range(3)]
    for payload in payloads:
        pub.publish(topic, payload, 1)
    pub.disconnect()

    back = Peer(host, port, client_id, protocol, clean_session=False)
    session_present = back.connect()
    if protocol == mqtt.MQTTv31:
        # MQTT 3.1's CONNACK has no session-present flag: its first byte is reserved.
        check(session_present is False, f"an MQTT 3.1 CONNACK has no session-present flag (got {session_present})")
    else:
        check(session_present is True, f"reconnecting with clean_session=False reports session_present=True (got {session_present})")
    for payload in payloads:
        expect_message(back, topic, payload, 1, False)
    back.disconnect()


SCENARIOS = {"roundtrip": roundtrip, "retained": retained, "will": will, "persistent": persistent}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="311")
    args = parser.parse_args()
    tag = f"v{args.protocol}"
    try:
        SCENARIOS[args.scenario](args.host, args.port, PROTOCOLS[args.protocol], tag)
    except Failure as failure:
        print(f"FAIL: {args.scenario} over MQTT {args.protocol}: {failure}", file=sys.stderr)
        sys.exit(1)
    except OSError as err:
        print(f"FAIL: {args.scenario} over MQTT {args.protocol}: network error: {err}", file=sys.stderr)
        sys.exit(1)
    print(f"passed: {args.scenario} over MQTT {args.protocol} (paho-mqtt {paho.mqtt.__version__})", flush=True)


if __name__ == "__main__":
    main()
