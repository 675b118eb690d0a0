#!/usr/bin/env python3
"""TLS scenarios for midge with the Eclipse Paho Python client (paho-mqtt 2.x), whose
TLS is Python's ssl module (OpenSSL).

Usage: python3 tls.py HOST PORT SCENARIO --ca CA.crt [--cert C.crt --key C.key] [--protocol 311|5]

Scenarios:
  roundtrip  connect, subscribe to tls/paho, publish QoS 1 to it, receive it back.
  acl        (identity-as-username, ACL allowing devices/#) as roundtrip on devices/paho,
             and a subscription to other/# refused: SUBACK 0x80 (3.1.1) or 0x87 (5).
  refused    the connection must not come up: a handshake error or a close before CONNACK.
Prints `passed: SCENARIO` and exits 0, or `FAIL: ...` on stderr and exits 1.
Run by crates/midge/tests/interop_tls.rs.
"""

import argparse
import queue
import ssl
import sys

try:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
except ImportError as err:
    print(f"FAIL: cannot import paho-mqtt ({err}); run ./scripts/test", file=sys.stderr)
    sys.exit(2)

TIMEOUT = 15.0


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def client(args, events):
    protocol = mqtt.MQTTv5 if args.protocol == "5" else mqtt.MQTTv311
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"paho-tls-{args.scenario}", protocol=protocol,
                    reconnect_on_failure=False)
    c.tls_set(ca_certs=args.ca, certfile=args.cert, keyfile=args.key, cert_reqs=ssl.CERT_REQUIRED)
    c.on_connect = lambda _c, _u, _f, reason, _p: events.put(("connect", reason))
    c.on_disconnect = lambda _c, _u, _f, reason, _p: events.put(("disconnect", reason))
    c.on_subscribe = lambda _c, _u, _mid, reasons, _p: events.put(("suback", reasons))
    c.on_message = lambda _c, _u, msg: events.put(("message", msg))
    return c


def expect(events, kind):
    try:
        event, value = events.get(timeout=TIMEOUT)
    except queue.Empty:
        fail(f"no {kind} within {TIMEOUT} s")
    if event != kind:
        fail(f"expected {kind}, got {event} {value}")
    return value


def roundtrip(c, events, topic):
    reasons = (c.subscribe(topic, qos=1), expect(events, "suback"))[1]
    if reasons[0].is_failure:
        fail(f"subscription to {topic} refused: {reasons[0]}")
    c.publish(topic, b"over tls", qos=1)
    msg = expect(events, "message")
    if msg.topic != topic or msg.payload != b"over tls":
        fail(f"wrong message {msg.topic} {msg.payload!r}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("scenario", choices=["roundtrip", "acl", "refused"])
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--protocol", choices=["311", "5"], default="311")
    args = parser.parse_args()
    events = queue.Queue()
    c = client(args, events)
    if args.scenario == "refused":
        try:
            c.connect(args.host, args.port, keepalive=30)
        except (ssl.SSLError, OSError) as err:
            print(f"handshake refused: {err}", flush=True)
            print("passed: refused", flush=True)
            return
        c.loop_start()
        try:
            event, value = events.get(timeout=TIMEOUT)
        except queue.Empty:
            fail(f"neither CONNACK nor a close within {TIMEOUT} s")
        c.loop_stop()
        if event == "connect" and not value.is_failure:
            fail("the connection came up")
        print(f"refused after the handshake: {event} {value}", flush=True)
        print("passed: refused", flush=True)
        return
    c.connect(args.host, args.port, keepalive=30)
    c.loop_start()
    reason = expect(events, "connect")
    if reason.is_failure:
        fail(f"CONNACK refused: {reason}")
    if args.scenario == "roundtrip":
        roundtrip(c, events, "tls/paho")
    else:
        roundtrip(c, events, "devices/paho")
        c.subscribe("other/#", qos=1)
        reasons = expect(events, "suback")
        wanted = 0x87 if args.protocol == "5" else 0x80
        if reasons[0].value != wanted:
            fail(f"subscription outside the ACL: expected {wanted:#x}, got {reasons[0].value:#x}")
    c.disconnect()
    c.loop_stop()
    print(f"passed: {args.scenario}", flush=True)


if __name__ == "__main__":
    main()
