#!/usr/bin/env python3
"""Authentication scenarios for midge: MQTT 5 enhanced authentication with an
independent SCRAM-SHA-256 client (RFC 5802/7677, written here from hashlib and
hmac over a raw socket), and plain user name/password logins with paho-mqtt.

Usage: python3 auth_v5.py HOST PORT SCENARIO

The broker runs with a password file holding (see interop_auth.rs):
  sam / pencil   SCRAM-SHA-256 credentials (written by `midge passwd -H scram-sha-256`)
  alice / secret a $7$ hash written by Debian's mosquitto_passwd
  ann / a2       an argon2id hash written by `midge passwd`

Each scenario prints `ok: ...` per check and `passed: SCENARIO` at the end, or
`FAIL: ...` on stderr and exits 1. Every wait is bounded by TIMEOUT.
"""

import base64
import hashlib
import hmac
import os
import queue
import socket
import sys

from scenario import Failure, check, run

TIMEOUT = 10.0
METHOD = "SCRAM-SHA-256"

# Packet types (first byte, flags included).
CONNECT, CONNACK, PUBLISH_QOS1, PUBACK, SUBSCRIBE, SUBACK, PUBLISH, DISCONNECT, AUTH = (
    0x10, 0x20, 0x32, 0x40, 0x82, 0x90, 0x30, 0xE0, 0xF0)
# Property identifiers.
AUTH_METHOD, AUTH_DATA, REASON_STRING = 0x15, 0x16, 0x1F


# --- a minimal MQTT 5 wire format -------------------------------------------

def varint(n):
    out = b""
    while True:
        byte, n = n % 128, n // 128
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def utf8(s):
    b = s.encode() if isinstance(s, str) else s
    return len(b).to_bytes(2, "big") + b


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def auth_props(method, data=None):
    props = bytes([AUTH_METHOD]) + utf8(method)
    if data is not None:
        props += bytes([AUTH_DATA]) + utf8(data)
    return props


def connect_packet(client_id, props=b"", username=None, password=None):
    flags = 0x02 | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    body = utf8("MQTT") + bytes([5, flags]) + (60).to_bytes(2, "big") + varint(len(props)) + props + utf8(client_id)
    if username is not None:
        body += utf8(username)
    if password is not None:
        body += utf8(password)
    return packet(CONNECT, body)


def auth_packet(reason, method, data=None):
    props = auth_props(method, data)
    return packet(AUTH, bytes([reason]) + varint(len(props)) + props)


class Conn:
    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def _need(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise Failure(f"connection closed with {len(self.buf)} of {n} bytes")
            self.buf += chunk

    def read(self):
        """The next packet as (first byte, body)."""
        self._need(2)
        length, shift, i = 0, 0, 1
        while True:
            self._need(i + 1)
            byte = self.buf[i]
            length += (byte & 0x7F) << shift
            shift += 7
            i += 1
            if not byte & 0x80:
                break
        self._need(i + length)
        first, body = self.buf[0], self.buf[i:i + length]
        self.buf = self.buf[i + length:]
        return first, body

    def closed(self):
        """True if the server closes the connection (after any packets it still sends)."""
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True


def parse_props(data):
    """Properties at the start of `data` → (dict, rest). String/binary ones only, which is all we read."""
    length, shift, i = 0, 0, 0
    while True:
        byte = data[i]
        length += (byte & 0x7F) << shift
        shift += 7
        i += 1
        if not byte & 0x80:
            break
    props, raw, j = {}, data[i:i + length], 0
    fixed = {0x01: 1, 0x02: 4, 0x11: 4, 0x13: 2, 0x21: 2, 0x22: 2, 0x23: 2, 0x24: 1, 0x25: 1, 0x27: 4, 0x28: 1, 0x29: 1, 0x2A: 1}
    while j < len(raw):
        pid = raw[j]
        j += 1
        if pid in fixed:
            props[pid] = raw[j:j + fixed[pid]]
            j += fixed[pid]
        elif pid == 0x26:
            for _ in range(2):
                n = int.from_bytes(raw[j:j + 2], "big")
                j += 2 + n
        elif pid == 0x0B:
            while raw[j] & 0x80:
                j += 1
            j += 1
        else:
            n = int.from_bytes(raw[j:j + 2], "big")
            props[pid] = raw[j + 2:j + 2 + n]
            j += 2 + n
    return props, data[i + length:]


def expect_connack(conn):
    first, body = conn.read()
    check(first == CONNACK, f"the server answers CONNACK (got {first:#x})")
    props, _ = parse_props(body[2:])
    return body[1], props


def expect_auth(conn):
    first, body = conn.read()
    check(first == AUTH, f"the server answers AUTH (got {first:#x})")
    props, _ = parse_props(body[1:])
    return body[0], props


# --- SCRAM-SHA-256, client side -----------------------------------------------

def b64(b):
    return base64.b64encode(b).decode()


class Scram:
    def __init__(self, user, password):
        self.user, self.password = user, password
        self.nonce = b64(os.urandom(18))
        self.bare = f"n={user},r={self.nonce}"

    def first(self):
        return "n,," + self.bare

    def final(self, server_first):
        fields = dict(f.split("=", 1) for f in server_first.split(","))
        check(fields["r"].startswith(self.nonce) and len(fields["r"]) > len(self.nonce),
              "server-first extends our nonce")
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), base64.b64decode(fields["s"]), int(fields["i"]))
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c={b64(b'n,,')},r={fields['r']}"
        self.auth_message = f"{self.bare},{server_first},{without_proof}".encode()
        signature = hmac.new(stored_key, self.auth_message, hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        self.server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
        return f"{without_proof},p={b64(proof)}"

    def verify(self, server_final):
        expected = hmac.new(self.server_key, self.auth_message, hashlib.sha256).digest()
        return server_final == f"v={b64(expected)}"


def scram_connect(host, port, user, password, client_id="scram"):
    """Runs CONNECT → AUTH → AUTH; returns (conn, scram, CONNACK reason, CONNACK properties)."""
    conn = Conn(host, port)
    scram = Scram(user, password)
    conn.send(connect_packet(client_id, auth_props(METHOD, scram.first())))
    reason, props = expect_auth(conn)
    check(reason == 0x18, f"AUTH carries 0x18 Continue authentication [MQTT-4.12.0-2] (got {reason:#x})")
    check(props.get(AUTH_METHOD) == METHOD.encode(), "and the method of the CONNECT [MQTT-4.12.0-5]")
    conn.send(auth_packet(0x18, METHOD, scram.final(props[AUTH_DATA].decode())))
    reason, connack_props = expect_connack(conn)
    return conn, scram, reason, connack_props


# --- scenarios -------------------------------------------------------------------

def scram_success(host, port):
    conn, scram, reason, props = scram_connect(host, port, "sam", "pencil")
    check(reason == 0x00, f"the right password is accepted (CONNACK {reason:#x})")
    check(props.get(AUTH_METHOD) == METHOD.encode(), "CONNACK names the method [MQTT-4.12.0-5]")
    check(scram.verify(props.get(AUTH_DATA, b"").decode()), "and carries server-final proving the server knows the key")
    # The session works: subscribe, publish to ourselves at QoS 1, receive it.
    conn.send(packet(SUBSCRIBE, (1).to_bytes(2, "big") + b"\x00" + utf8("scram/t") + b"\x01"))
    first, body = conn.read()
    check(first == SUBACK and body[-1] == 0x01, "an authenticated client subscribes")
    conn.send(packet(PUBLISH_QOS1, utf8("scram/t") + (2).to_bytes(2, "big") + b"\x00" + b"hello"))
    seen = set()
    while len(seen) < 2:
        first, body = conn.read()
        seen.add(first & 0xF0)
    check(seen == {0x30, 0x40}, "and gets its PUBACK and its own message")


def scram_wrong_password(host, port):
    conn, _, reason, _ = scram_connect(host, port, "sam", "pencil!")
    check(reason == 0x86, f"a wrong password gets CONNACK 0x86 [MQTT-4.12.0-4] (got {reason:#x})")
    check(conn.closed(), "and the connection is closed")


def scram_unknown_user(host, port):
    # The exchange runs to the end, so unknown users look like wrong passwords.
    conn, _, reason, _ = scram_connect(host, port, "nobody", "pencil")
    check(reason == 0x86, f"an unknown user gets CONNACK 0x86 only after the exchange (got {reason:#x})")
    check(conn.closed(), "and the connection is closed")
    # A user with a password hash but no SCRAM credentials cannot use SCRAM.
    conn, _, reason, _ = scram_connect(host, port, "alice", "secret")
    check(reason == 0x86, f"a user without SCRAM credentials gets 0x86 (got {reason:#x})")


def reauthenticate(host, port):
    conn, _, reason, _ = scram_connect(host, port, "sam", "pencil", client_id="reauth")
    check(reason == 0x00, "connected with SCRAM-SHA-256")
    scram = Scram("sam", "pencil")
    conn.send(auth_packet(0x19, METHOD, scram.first()))
    reason, props = expect_auth(conn)
    check(reason == 0x18, f"AUTH 0x19 starts re-authentication; the server continues with 0x18 [MQTT-4.12.1-1] (got {reason:#x})")
    # Traffic goes on during the exchange (section 4.12.1).
    conn.send(packet(PUBLISH_QOS1, utf8("reauth/t") + (7).to_bytes(2, "big") + b"\x00" + b"mid-exchange"))
    first, body = conn.read()
    check(first == PUBACK and body[:2] == (7).to_bytes(2, "big"), "a PUBLISH mid-exchange is acknowledged")
    conn.send(auth_packet(0x18, METHOD, scram.final(props[AUTH_DATA].decode())))
    reason, props = expect_auth(conn)
    check(reason == 0x00, f"re-authentication succeeds with AUTH 0x00 (got {reason:#x})")
    check(props.get(AUTH_METHOD) == METHOD.encode() and scram.verify(props.get(AUTH_DATA, b"").decode()),
          "carrying the method and server-final")
    conn.send(packet(0xC0, b""))
    first, _ = conn.read()
    check(first == 0xD0, "the connection carries on (PINGRESP)")


def reauthenticate_wrong(host, port):
    conn, _, reason, _ = scram_connect(host, port, "sam", "pencil", client_id="reauth-bad")
    check(reason == 0x00, "connected with SCRAM-SHA-256")
    scram = Scram("sam", "wrong")
    conn.send(auth_packet(0x19, METHOD, scram.first()))
    _, props = expect_auth(conn)
    conn.send(auth_packet(0x18, METHOD, scram.final(props[AUTH_DATA].decode())))
    first, body = conn.read()
    check(first == DISCONNECT and body[0] == 0x86,
          f"a failed re-authentication gets DISCONNECT 0x86 [MQTT-4.12.1-2] (got {first:#x} {body[:1]!r})")
    check(conn.closed(), "and the connection is closed")


def auth_rules(host, port):
    # A client that named no method must not send AUTH [MQTT-4.12.0-7], and
    # the server names no method in CONNACK [MQTT-4.12.0-6].
    conn = Conn(host, port)
    conn.send(connect_packet("plain", username="sam", password="pencil"))
    reason, props = expect_connack(conn)
    check(reason == 0x00, "a SCRAM user can also log in with a plain password")
    check(AUTH_METHOD not in props, "CONNACK names no method when CONNECT did not [MQTT-4.12.0-6]")
    conn.send(auth_packet(0x19, METHOD, "n,,n=sam,r=abc"))
    first, body = conn.read()
    check(first == DISCONNECT and body[0] == 0x82, f"AUTH without a method at CONNECT: DISCONNECT 0x82 [MQTT-4.12.0-7] ({body[:1]!r})")
    check(conn.closed(), "and the connection is closed")

    # Only AUTH or DISCONNECT before CONNACK [MQTT-3.1.2-30].
    conn = Conn(host, port)
    conn.send(connect_packet("early", auth_props(METHOD, Scram("sam", "pencil").first())))
    expect_auth(conn)
    conn.send(packet(0xC0, b""))
    reason, _ = expect_connack(conn)
    check(reason == 0x82, f"a PINGREQ before CONNACK gets CONNACK 0x82 [MQTT-3.1.2-30] (got {reason:#x})")
    check(conn.closed(), "and the connection is closed")

    # Every AUTH must name the CONNECT's method [MQTT-4.12.0-5].
    conn = Conn(host, port)
    scram = Scram("sam", "pencil")
    conn.send(connect_packet("switch", auth_props(METHOD, scram.first())))
    _, props = expect_auth(conn)
    conn.send(auth_packet(0x18, "SCRAM-SHA-1", scram.final(props[AUTH_DATA].decode())))
    reason, _ = expect_connack(conn)
    check(reason == 0x82, f"an AUTH naming another method gets CONNACK 0x82 [MQTT-4.12.0-5] (got {reason:#x})")

    # A method the server does not offer [MQTT-4.12.0-1].
    conn = Conn(host, port)
    conn.send(connect_packet("other", auth_props("GS2-KRB5", "x")))
    reason, _ = expect_connack(conn)
    check(reason == 0x8C, f"an unsupported method gets CONNACK 0x8C [MQTT-4.12.0-1] (got {reason:#x})")
    check(conn.closed(), "and the connection is closed")


def passwords(host, port):
    """Plain logins with an independent client (paho-mqtt), 3.1.1 and 5."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    def attempt(protocol, username=None, password=None):
        results = queue.Queue()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pw-{os.getpid()}-{username}", protocol=protocol)
        client.on_connect = lambda c, u, flags, rc, props: results.put(rc)
        client.on_connect_fail = lambda c, u: results.put(None)
        if username is not None:
            client.username_pw_set(username, password)
        client.connect(host, port, keepalive=30)
        client.loop_start()
        try:
            rc = results.get(timeout=TIMEOUT)
        except queue.Empty:
            raise Failure(f"no CONNACK for {username}") from None
        finally:
            client.disconnect()
            client.loop_stop()
        return rc

    for protocol, name in ((mqtt.MQTTv311, "3.1.1"), (mqtt.MQTTv5, "5")):
        for user, password in (("alice", "secret"), ("ann", "a2"), ("sam", "pencil")):
            rc = attempt(protocol, user, password)
            check(not rc.is_failure, f"MQTT {name}: {user} logs in with the right password ({rc})")
        rc = attempt(protocol, "alice", "wrong")
        check(rc.value in (4, 0x86), f"MQTT {name}: a wrong password is refused as bad user name or password ({rc.value:#x})")
        rc = attempt(protocol, "mallory", "secret")
        check(rc.value in (4, 0x86), f"MQTT {name}: an unknown user is refused the same way ({rc.value:#x})")
        rc = attempt(protocol)
        check(rc.value in (5, 0x87), f"MQTT {name}: an anonymous client is not authorized ({rc.value:#x})")


class Paho:
    """A paho-mqtt client logged in as `user`, its callbacks feeding queues read with a time limit."""

    def __init__(self, host, port, user, password, v5=True, client_id=None, will=None):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        self.mqtt = mqtt
        self.name = f"{user} ({'v5' if v5 else '3.1.1'})"
        protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"{user}-{os.urandom(4).hex()}",
                                  protocol=protocol)
        self.events = {name: queue.Queue() for name in ("connect", "message", "subscribe", "publish")}
        c = self.client
        c.on_connect = lambda cl, ud, flags, rc, props: self.events["connect"].put(rc)
        c.on_message = lambda cl, ud, msg: self.events["message"].put(msg)
        c.on_subscribe = lambda cl, ud, mid, rcs, props: self.events["subscribe"].put(rcs)
        c.on_publish = lambda cl, ud, mid, rc, props: self.events["publish"].put(rc)
        c.username_pw_set(user, password)
        if will:
            c.will_set(will, b"gone", qos=1)
        c.connect(host, port, keepalive=30)
        c.loop_start()
        self.connack = self.wait("connect")
        self.sys = set()

    def wait(self, event, timeout=TIMEOUT):
        try:
            return self.events[event].get(timeout=timeout)
        except queue.Empty:
            raise Failure(f"{self.name}: no {event} within {timeout} s") from None

    def subscribe(self, topic_filter):
        self.client.subscribe(topic_filter, qos=1)
        return self.wait("subscribe")[0]

    def publish(self, topic, payload, qos=1, retain=False):
        self.client.publish(topic, payload, qos=qos, retain=retain)
        return self.wait("publish")

    def received(self, until_payload):
        """Payloads received up to and including `until_payload`; `$SYS` ones are noted in self.sys."""
        got = []
        while True:
            msg = self.wait("message")
            if msg.topic.startswith("$SYS/"):
                self.sys.add(msg.topic)
                continue
            got.append((msg.topic, msg.payload))
            if msg.payload == until_payload:
                return got


def acl(host, port):
    """ACL file (interop_auth.rs): alice readwrite alice/#, read #, deny secret/#, read $SYS/broker/uptime;
    ann write ann/out; patterns write devices/%c/#, read inbox/%u/#."""
    alice = Paho(host, port, "alice", "secret")
    check(not alice.connack.is_failure, "alice connects")
    # Subscriptions: within a readable filter, not wholly denied.
    check(alice.subscribe("#").value == 1, "alice may subscribe to # (read #)")
    check(alice.subscribe("secret/#").value == 0x87, "a wholly denied filter gets SUBACK 0x87 (v5)")
    check(alice.subscribe("$SYS/#").value == 0x87, "$SYS/# is not covered by read #")
    check(alice.subscribe("$SYS/broker/uptime").value == 1, "an explicitly readable $SYS topic may be subscribed")
    old = Paho(host, port, "alice", "secret", v5=False)
    check(old.subscribe("secret/#").value in (0x80, 128), "3.1.1: SUBACK 0x80")

    ann = Paho(host, port, "ann", "a2")
    rc = ann.publish("secret/plans", b"leak")
    check(rc.value == 0x87, f"v5: a denied QoS 1 publish gets PUBACK 0x87 ({rc})")
    # QoS 2 on a raw socket, to see the PUBREC itself (paho sends PUBREL anyway).
    raw = Conn(host, port)
    raw.send(connect_packet("ann-raw", username="ann", password="a2"))
    check(expect_connack(raw)[0] == 0, "ann connects on a raw socket")
    raw.send(packet(0x34, utf8("secret/plans") + (9).to_bytes(2, "big") + b"\x00" + b"leak2"))
    first, body = raw.read()
    check(first == 0x50 and body[:3] == b"\x00\x09\x87", f"v5: a denied QoS 2 publish gets PUBREC 0x87 ({first:#x} {body!r})")
    ann.publish("ann/out", b"allowed")
    ann311 = Paho(host, port, "ann", "a2", v5=False)
    rc = ann311.publish("weather/x", b"silently dropped")
    check(not rc.is_failure, "3.1.1: a denied publish is acknowledged normally (and dropped)")
    got = alice.received(b"allowed")
    check(got == [("ann/out", b"allowed")], f"nothing denied reached the # subscriber ({got})")

    # Delivery: alice may publish alice/# and read #, but a # subscriber never gets secret/.
    alice_pub = Paho(host, port, "alice", "secret")
    # Publishing to secret/ is denied for alice too; a user allowed to write there:
    writer = Paho(host, port, "sam", "pencil")
    writer.publish("secret/inside", b"hidden")
    writer.publish("alice/inbox", b"visible")
    got = alice.received(b"visible")
    check(got == [("alice/inbox", b"visible")], f"a # subscriber never receives a topic it may not read ({got})")
    check(alice.sys == {"$SYS/broker/uptime"}, f"of $SYS it gets only the topic it may read ({alice.sys})")
    # Retained messages obey the same rule.
    writer.publish("secret/kept", b"hidden", retain=True)
    writer.publish("alice/kept", b"shown", retain=True)
    late = Paho(host, port, "alice", "secret")
    late.subscribe("#")
    got = late.received(b"shown")
    check(("secret/kept", b"hidden") not in got, f"retained messages on unreadable topics are not sent ({got})")

    # Patterns: %c and %u.
    dev = Paho(host, port, "ann", "a2", client_id="dev42")
    check(dev.publish("devices/dev42/temp", b"21").value == 0, "pattern devices/%c/# lets dev42 write its own topic")
    check(dev.publish("devices/dev7/temp", b"21").value == 0x87, "but not another device's")
    check(ann.subscribe("inbox/ann/#").value == 1, "pattern inbox/%u/# lets ann read her inbox")
    check(ann.subscribe("inbox/alice/#").value == 0x87, "but not alice's")

    # A will on a topic the client may not publish to is refused at CONNECT.
    refused = Paho(host, port, "ann", "a2", will="secret/will")
    check(refused.connack.value == 0x87, f"a will topic that may not be published: CONNACK 0x87 ({refused.connack})")
    refused311 = Paho(host, port, "ann", "a2", v5=False, will="secret/will")
    check(refused311.connack.value in (5, 0x87), f"3.1.1: CONNACK 5 not authorized ({refused311.connack})")
    for c in (alice, old, ann, ann311, alice_pub, writer, late, dev):
        c.client.disconnect()


def webhook(host, port):
    """The webhook policy (interop_webhook.rs, rules in webhook_server.py), with paho 5 and 3.1.1."""
    alice = Paho(host, port, "alice", "secret")
    check(not alice.connack.is_failure, "the webhook lets alice in")
    wrong = Paho(host, port, "alice", "wrong")
    check(wrong.connack.value == 0x86, f"v5: the webhook's deny is bad user name or password ({wrong.connack})")
    wrong311 = Paho(host, port, "alice", "wrong", v5=False)
    check(wrong311.connack.value in (4, 0x86), f"3.1.1: CONNACK 4 ({wrong311.connack})")
    binary = Paho(host, port, "bin", b"\xff\x00")
    check(not binary.connack.is_failure, "a password that is not UTF-8 reaches the webhook as password_base64")

    check(alice.subscribe("allowed/#").value == 1, "an empty 204 answer allows a subscription")
    check(alice.subscribe("denied/#").value == 0x87, "{result: deny} refuses it: SUBACK 0x87")
    alice311 = Paho(host, port, "alice", "secret", v5=False)
    check(alice311.subscribe("denied/#").value in (0x80, 128), "3.1.1: SUBACK 0x80")

    check(alice.publish("allowed/1", b"one").value == 0, "an allowed publish gets PUBACK 0")
    check(alice.publish("allowed/1", b"two").value == 0, "and again (the answer is cached)")
    got = alice.received(b"two")
    check(got == [("allowed/1", b"one"), ("allowed/1", b"two")], f"both arrive ({got})")
    check(alice.publish("denied/1", b"x").value == 0x87, "a denied publish gets PUBACK 0x87")
    check(alice.publish("status/403/x", b"x").value == 0x87, "a 403 answer denies")
    check(alice.publish("status/500/x", b"x").value == 0x87, "a 500 answer denies")
    check(alice.publish("garbage/x", b"x").value == 0x87, "an answer that is not JSON denies")
    check(alice.publish("slow/x", b"x").value == 0x87, "an answer slower than the timeout denies")
    check(alice.publish("allowed/2", b"after").value == 0, "the connection goes on after all that")
    for c in (alice, wrong, wrong311, binary, alice311):
        c.client.disconnect()


SCENARIOS = {
    "acl": acl,
    "webhook": webhook,
    "scram_success": scram_success,
    "scram_wrong_password": scram_wrong_password,
    "scram_unknown_user": scram_unknown_user,
    "reauthenticate": reauthenticate,
    "reauthenticate_wrong": reauthenticate_wrong,
    "auth_rules": auth_rules,
    "passwords": passwords,
}


if __name__ == "__main__":
    run(SCENARIOS)
