#!/usr/bin/env python3
"""MQTT 5 scenarios for midge with the Eclipse Paho Python client (paho-mqtt 2.x).

Usage: python3 paho_v5.py HOST PORT SCENARIO

Each scenario prints `ok: ...` per check and `passed: SCENARIO` at the end, or
`FAIL: ...` on stderr and exits 1. Every wait is bounded by TIMEOUT.
Run by crates/midge/tests/interop_paho_v5.rs.
"""

import queue
import socket
import sys
import time
import uuid

from scenario import Failure, check, run

try:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.subscribeoptions import SubscribeOptions
except ImportError as err:
    print(f"FAIL: cannot import paho-mqtt ({err}); run ./scripts/test, which installs paho-mqtt>=2,<3", file=sys.stderr)
    sys.exit(2)

TIMEOUT = 10.0


class Peer:
    """A v5 paho client whose callbacks feed queues read with a time limit."""

    def __init__(self, host, port, client_id=None, clean_start=True, connect_properties=None, will=None, v311=False):
        self.client_id = client_id or f"v5-{uuid.uuid4().hex[:10]}"
        if v311:
            self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv311)
        else:
            self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5)
        self.events = {name: queue.Queue() for name in ("connect", "message", "subscribe", "publish", "disconnect")}
        c = self.client
        c.on_connect = lambda cl, ud, flags, rc, props: self.events["connect"].put((flags, rc, props))
        c.on_message = lambda cl, ud, msg: self.events["message"].put(msg)
        c.on_subscribe = lambda cl, ud, mid, rcs, props: self.events["subscribe"].put((mid, rcs))
        c.on_publish = lambda cl, ud, mid, rc, props: self.events["publish"].put((mid, rc))
        c.on_disconnect = lambda cl, ud, flags, rc, props: self.events["disconnect"].put(rc)
        if will is not None:
            will_topic, will_payload, will_properties = will
            c.will_set(will_topic, will_payload, qos=1, properties=will_properties)
        if v311:
            c.connect(host, port, keepalive=60)
        else:
            c.connect(host, port, keepalive=60, clean_start=clean_start, properties=connect_properties)
        c.loop_start()
        self.flags, rc, self.connack_properties = self.wait("connect")
        check(not rc.is_failure, f"{self.client_id} connected ({rc})")

    def wait(self, event, timeout=TIMEOUT):
        try:
            return self.events[event].get(timeout=timeout)
        except queue.Empty:
            raise Failure(f"{self.client_id}: no {event} within {timeout} s") from None

    def nothing(self, event, timeout=1.0):
        try:
            got = self.events[event].get(timeout=timeout)
        except queue.Empty:
            return
        raise Failure(f"{self.client_id}: unexpected {event}: {got!r}")

    def subscribe(self, topic, properties=None, **options):
        qos = options.pop("qos", 1)
        if self.client.protocol == mqtt.MQTTv311:
            self.client.subscribe(topic, qos=qos)
        else:
            self.client.subscribe(topic, options=SubscribeOptions(qos=qos, **options), properties=properties)
        _, rcs = self.wait("subscribe")
        check(all(not rc.is_failure for rc in rcs), f"{self.client_id} subscribed to {topic} with {options}")

    def publish(self, topic, payload, qos=1, retain=False, properties=None):
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if qos > 0:
            mid, rc = self.wait("publish")
            shown = payload if len(payload) <= 32 else f"{len(payload)} bytes"
            check(mid == info.mid, f"{self.client_id} published {shown!r} to {topic}")
            return rc
        return None

    def close(self, reason=None, properties=None):
        self.client.disconnect(reasoncode=reason, properties=properties)
        self.wait("disconnect")
        self.client.loop_stop()

    def vanish(self):
        """Drops the connection without DISCONNECT, as a crashed client would."""
        self.client.loop_stop()
        sock = self.client.socket()
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()


def topic():
    return f"v5/{uuid.uuid4().hex[:10]}"


def no_local(host, port):
    t = topic()
    a = Peer(host, port)
    a.subscribe(t, noLocal=True)
    b = Peer(host, port)
    b.subscribe(t)
    a.publish(t, b"from a")
    msg = b.wait("message")
    check(msg.payload == b"from a", "another subscriber gets the message")
    a.nothing("message")
    check(True, "No Local: the publisher's own subscription gets nothing [MQTT-3.8.3-3]")
    b.publish(t, b"from b")
    check(a.wait("message").payload == b"from b", "No Local still delivers other clients' messages")


def retain_as_published(host, port):
    t = topic()
    keep = Peer(host, port)
    keep.subscribe(t, retainAsPublished=True)
    clear = Peer(host, port)
    clear.subscribe(t, retainAsPublished=False)
    pub = Peer(host, port)
    pub.publish(t, b"r", retain=True)
    check(keep.wait("message").retain, "Retain As Published keeps RETAIN=1 on live delivery")
    check(not clear.wait("message").retain, "without it RETAIN is 0 on live delivery")
    pub.publish(t, b"", retain=True)  # clear the retained message


def retain_handling(host, port):
    t = topic()
    pub = Peer(host, port)
    pub.publish(t, b"kept", retain=True)
    always = Peer(host, port)
    always.subscribe(t, retainHandling=SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE)
    check(always.wait("message").payload == b"kept", "Retain Handling 0 sends the retained message")
    always.subscribe(t, retainHandling=SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE)
    check(always.wait("message").payload == b"kept", "Retain Handling 0 sends it again on re-subscribe")
    if_new = Peer(host, port)
    if_new.subscribe(t, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
    check(if_new.wait("message").payload == b"kept", "Retain Handling 1 sends it for a new subscription")
    if_new.subscribe(t, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
    if_new.nothing("message")
    check(True, "Retain Handling 1 does not send it for an existing subscription")
    never = Peer(host, port)
    never.subscribe(t, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
    never.nothing("message")
    check(True, "Retain Handling 2 never sends it")
    pub.publish(t, b"", retain=True)


def no_matching_subscribers(host, port):
    pub = Peer(host, port)
    rc = pub.publish(topic(), b"nobody", qos=1)
    check(rc.value == 0x10, f"PUBACK says 0x10 No matching subscribers (got {rc})")
    t = topic()
    sub = Peer(host, port)
    sub.subscribe(t)
    rc = pub.publish(t, b"somebody", qos=1)
    check(rc.value == 0x00, f"PUBACK says 0x00 Success with a subscriber (got {rc})")


def takeover(host, port):
    first = Peer(host, port, client_id=f"taken-{uuid.uuid4().hex[:8]}")
    Peer(host, port, client_id=first.client_id)
    rc = first.wait("disconnect")
    check(rc.value == 0x8E, f"the older connection gets DISCONNECT 0x8E Session taken over (got {rc})")


def props(packet_type, **values):
    p = Properties(packet_type)
    for name, value in values.items():
        setattr(p, name, value)
    return p


def expiry(seconds):
    return props(PacketTypes.PUBLISH, MessageExpiryInterval=seconds)


def message_expiry(host, port):
    t = topic()
    session = props(PacketTypes.CONNECT, SessionExpiryInterval=300)
    sub = Peer(host, port, client_id=f"exp-{uuid.uuid4().hex[:8]}", clean_start=True, connect_properties=session)
    sub.subscribe(t, qos=1)
    sub.close()
    pub = Peer(host, port)
    pub.publish(t, b"short", properties=expiry(1))
    pub.publish(t, b"long", properties=expiry(600))
    pub.publish(t, b"forever")
    # Let the short one expire while the subscriber is away: time is what this checks.
    time.sleep(2.2)
    back = Peer(host, port, client_id=sub.client_id, clean_start=False, connect_properties=session)
    check(back.flags.session_present, "the session was kept (session present)")
    first = back.wait("message")
    check(first.payload == b"long", f"the expired message is not delivered [MQTT-3.3.2-5] (first came {first.payload!r})")
    left = first.properties.MessageExpiryInterval
    check(590 <= left <= 598, f"the expiry interval sent is the time left [MQTT-3.3.2-6] (got {left})")
    second = back.wait("message")
    check(second.payload == b"forever", "a message without expiry is delivered")
    check(not hasattr(second.properties, "MessageExpiryInterval"), "and carries no expiry interval")
    # Retained messages expire too.
    rt = topic()
    pub.publish(rt, b"stale", retain=True, properties=expiry(1))
    time.sleep(1.5)
    late = Peer(host, port)
    late.subscribe(rt)
    late.nothing("message")
    check(True, "an expired retained message is not sent to a new subscriber")


def maximum_packet_size(host, port):
    t = topic()
    small = Peer(host, port, connect_properties=props(PacketTypes.CONNECT, MaximumPacketSize=200))
    small.subscribe(t, qos=1)
    pub = Peer(host, port)
    pub.publish(t, b"x" * 500)
    pub.publish(t, b"fits")
    msg = small.wait("message")
    check(msg.payload == b"fits", f"a packet over the client's Maximum Packet Size is not sent [MQTT-3.1.2-25] (got {len(msg.payload)} bytes)")


def session(seconds):
    return props(PacketTypes.CONNECT, SessionExpiryInterval=seconds)


def session_expiry(host, port):
    cid = f"sx-{uuid.uuid4().hex[:8]}"
    a = Peer(host, port, client_id=cid, connect_properties=session(1))
    a.close()
    b = Peer(host, port, client_id=cid, clean_start=False, connect_properties=session(1))
    check(b.flags.session_present, "a session is kept within its expiry interval")
    b.close()
    time.sleep(1.6)  # past the 1 s interval: the expiry timer is what this checks
    c = Peer(host, port, client_id=cid, clean_start=False, connect_properties=session(60))
    check(not c.flags.session_present, "the session is gone once its expiry interval has passed [MQTT-3.1.2-23]")
    c.close(properties=props(PacketTypes.DISCONNECT, SessionExpiryInterval=0))
    d = Peer(host, port, client_id=cid, clean_start=False)
    check(not d.flags.session_present, "DISCONNECT with Session Expiry Interval 0 ends the session at once")
    d.close()
    e = Peer(host, port, client_id=cid, clean_start=False)
    check(not e.flags.session_present, "no Session Expiry Interval at CONNECT means the session ends with the connection")


def will_delay(host, port):
    t = topic()
    watcher = Peer(host, port)
    watcher.subscribe(t)
    cid = f"wd-{uuid.uuid4().hex[:8]}"
    delayed = props(PacketTypes.WILLMESSAGE, WillDelayInterval=2)
    first = Peer(host, port, client_id=cid, connect_properties=session(60), will=(t, b"late will", delayed))
    first.vanish()
    time.sleep(0.5)
    back = Peer(host, port, client_id=cid, clean_start=False, connect_properties=session(60))
    check(back.flags.session_present, "the client came back within the will delay")
    watcher.nothing("message", timeout=2.5)
    check(True, "a reconnect within the Will Delay Interval suppresses the will [MQTT-3.1.3-9]")
    back.client.disconnect()
    back.client.loop_stop()
    again = Peer(host, port, client_id=cid, clean_start=False, connect_properties=session(60), will=(t, b"late will", delayed))
    again.vanish()
    gone = time.monotonic()
    msg = watcher.wait("message")
    waited = time.monotonic() - gone
    check(msg.payload == b"late will", "the will arrives when the client does not come back")
    check(1.5 <= waited <= 3.5, f"after the 2 s Will Delay Interval (took {waited:.2f} s)")


def disconnect_with_will(host, port):
    t = topic()
    watcher = Peer(host, port)
    watcher.subscribe(t)
    leaving = Peer(host, port, will=(t, b"asked for", None))
    from paho.mqtt.reasoncodes import ReasonCode
    leaving.close(reason=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
    check(watcher.wait("message").payload == b"asked for", "DISCONNECT with reason 0x04 publishes the will")
    quiet = Peer(host, port, will=(t, b"not sent", None))
    quiet.close()
    watcher.nothing("message")
    check(True, "a normal DISCONNECT discards the will [MQTT-3.1.2-10]")


def subscription_identifiers(host, port):
    base = topic()
    sub = Peer(host, port)
    sub.subscribe(f"{base}/+", properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=1))
    sub.subscribe(f"{base}/#", properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=2))
    sub.subscribe(f"{base}/x/#")
    pub = Peer(host, port)
    pub.publish(f"{base}/a", b"both")
    msg = sub.wait("message")
    ids = sorted(msg.properties.SubscriptionIdentifier)
    check(ids == [1, 2], f"one copy carries every matching Subscription Identifier [MQTT-3.3.4-3] (got {ids})")
    sub.nothing("message")
    check(True, "overlapping subscriptions give one copy")
    pub.publish(f"{base}/x/y", b"one")
    msg = sub.wait("message")
    ids = getattr(msg.properties, "SubscriptionIdentifier", [])
    check(ids == [2], f"only the identifiers of matching subscriptions (got {ids})")
    pub.publish(f"{base}/r", b"kept", retain=True)
    sub.wait("message")
    late = Peer(host, port)
    late.subscribe(f"{base}/r", properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=7))
    msg = late.wait("message")
    check(msg.retain and msg.properties.SubscriptionIdentifier == [7], "a retained message carries the new subscription's identifier")
    pub.publish(f"{base}/r", b"", retain=True)


def raw_v5_session(host, port):
    """A bare socket that has sent a v5 CONNECT and read its CONNACK."""
    sock = socket.create_connection((host, port), timeout=TIMEOUT)
    client_id = b"raw-alias"
    body = b"\x00\x04MQTT\x05\x02\x00\x3c\x00" + len(client_id).to_bytes(2, "big") + client_id
    sock.sendall(bytes([0x10, len(body)]) + body)
    header = recv_exactly(sock, 2)
    check(header[0] == 0x20 and header[1] < 0x80, f"raw v5 client got CONNACK ({header!r})")
    recv_exactly(sock, header[1])
    return sock


def recv_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise Failure(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def topic_alias_invalid(host, port):
    sock = raw_v5_session(host, port)
    # PUBLISH QoS 0, topic "t/a", properties: Topic Alias (0x23) = 60000.
    body = b"\x00\x03t/a" + b"\x03\x23" + (60000).to_bytes(2, "big") + b"x"
    sock.sendall(bytes([0x30, len(body)]) + body)
    header = recv_exactly(sock, 3)
    check(header[0] == 0xE0, f"the server sends DISCONNECT (got {header!r})")
    check(header[2] == 0x94, f"with reason 0x94 Topic Alias invalid (got {header[2]:#x})")
    properties = recv_exactly(sock, header[1] - 1)
    check(b"\x1f" in properties[:3] and b"Topic Alias" in properties, f"and a Reason String saying why ({properties!r})")
    check(sock.recv(16) == b"", "and closes the connection")


def drain(peer, timeout=1.0):
    """Every message that arrives until `timeout` passes with none."""
    got = []
    while True:
        try:
            got.append(peer.events["message"].get(timeout=timeout))
        except queue.Empty:
            return got


def shared_round_robin(host, port):
    t = topic()
    a = Peer(host, port)
    b = Peer(host, port, v311=True)
    a.subscribe(f"$share/g/{t}")
    b.subscribe(f"$share/g/{t}")
    pub = Peer(host, port)
    pub.publish(t, b"kept", retain=True)
    sent = [f"m{i}".encode() for i in range(10)]
    for payload in sent:
        pub.publish(t, payload)
    got_a, got_b = drain(a), drain(b)
    payloads = sorted(m.payload for m in got_a + got_b)
    check(b"kept" in payloads, "the retained message was delivered live to one member")
    payloads.remove(b"kept")
    check(payloads == sorted(sent), "each message reaches exactly one member of the group")
    check(abs(len(got_a) - len(got_b)) <= 1, f"round robin shares them evenly ({len(got_a)} and {len(got_b)})")
    check(True, "a 3.1.1 client is a member like a v5 one")
    late = Peer(host, port)
    late.subscribe(f"$share/other/{t}")
    late.nothing("message")
    check(True, "retained messages are not sent for a new shared subscription")
    pub.publish(t, b"", retain=True)


def shared_strategy(host, port, expect):
    t = topic()
    a, b = Peer(host, port), Peer(host, port)
    a.subscribe(f"$share/g/{t}")
    b.subscribe(f"$share/g/{t}")
    pub = Peer(host, port)
    for i in range(40):
        pub.publish(t, f"m{i}".encode())
    got_a, got_b = drain(a), drain(b)
    check(len(got_a) + len(got_b) == 40, f"every message reaches one member ({len(got_a)} + {len(got_b)})")
    if expect == "sticky":
        check(min(len(got_a), len(got_b)) == 0, "sticky: one member gets them all while it stays")
    else:
        parities = {int(m.payload[1:]) % 2 for m in got_a}
        check(min(len(got_a), len(got_b)) > 0 and len(parities) == 2, "random: both members get some, not in turns")


def shared_inflight_moves(host, port):
    t = topic()
    # A raw 3.1.1 member with a persistent session that takes messages and never acknowledges them.
    raw = socket.create_connection((host, port), timeout=TIMEOUT)
    cid = b"silent-member"
    body = b"\x00\x04MQTT\x04\x00\x00\x3c" + len(cid).to_bytes(2, "big") + cid
    raw.sendall(bytes([0x10, len(body)]) + body)
    check(recv_exactly(raw, 4)[0] == 0x20, "the silent member connected")
    filt = f"$share/g/{t}".encode()
    body = b"\x00\x01" + len(filt).to_bytes(2, "big") + filt + b"\x01"
    raw.sendall(bytes([0x82, len(body)]) + body)
    check(recv_exactly(raw, 5)[0] == 0x90, "the silent member subscribed")
    b = Peer(host, port)
    b.subscribe(f"$share/g/{t}")
    pub = Peer(host, port)
    sent = [f"m{i}".encode() for i in range(6)]
    for payload in sent:
        pub.publish(t, payload)
    first = drain(b, timeout=0.5)
    check(len(first) < 6, f"some messages went to the silent member ({6 - len(first)})")
    raw.shutdown(socket.SHUT_RDWR)
    raw.close()
    rest = drain(b)
    payloads = sorted(m.payload for m in first + rest)
    check(payloads == sorted(sent), "messages in flight to a member that left go to another member (v5 section 4.8.2)")


def shared_expiry_moves(host, port):
    t = topic()
    # Two members with sessions that outlive their connections; both go away.
    short = Peer(host, port, client_id=f"short-{uuid.uuid4().hex[:8]}", connect_properties=session(1))
    short.subscribe(f"$share/g/{t}", qos=1)
    long = Peer(host, port, client_id=f"long-{uuid.uuid4().hex[:8]}", connect_properties=session(60))
    long.subscribe(f"$share/g/{t}", qos=1)
    short.close()
    long.close()
    # With no member online the messages are shared out to the offline sessions.
    pub = Peer(host, port)
    sent = [f"m{i}".encode() for i in range(6)]
    for payload in sent:
        pub.publish(t, payload)
    time.sleep(1.6)  # past the short session's 1 s expiry: the timer is what this checks
    back = Peer(host, port, client_id=long.client_id, clean_start=False, connect_properties=session(60))
    check(back.flags.session_present, "the long session was kept")
    got = sorted(m.payload for m in drain(back))
    check(got == sorted(sent), f"messages queued for a member whose session expired go to another member (v5 section 4.8.2; got {got})")


def response_information(host, port):
    cid = f"ri-{uuid.uuid4().hex[:8]}"
    asking = Peer(host, port, client_id=cid, connect_properties=props(PacketTypes.CONNECT, RequestResponseInformation=1))
    info = getattr(asking.connack_properties, "ResponseInformation", None)
    check(info == f"reply/{cid}/", f"a client that asks gets Response Information with its client id ({info!r})")
    # Using it end to end: a responder answers on the topic the requester was given.
    responder = Peer(host, port)
    responder.subscribe("service/echo")
    asking.subscribe(f"{info}#")
    asking.publish("service/echo", b"ping", properties=props(PacketTypes.PUBLISH, ResponseTopic=f"{info}echo"))
    request = responder.wait("message")
    responder.publish(request.properties.ResponseTopic, b"pong")
    check(asking.wait("message").payload == b"pong", "and receives replies there")
    quiet = Peer(host, port)
    check(not hasattr(quiet.connack_properties, "ResponseInformation"),
          "a client that does not ask gets none [MQTT-3.1.2-28]")


def server_keep_alive(host, port):
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ka-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
    got = queue.Queue()
    c.on_connect = lambda cl, ud, flags, rc, props: got.put((rc, props))
    c.connect(host, port, keepalive=100)
    c.loop_start()
    rc, connack = got.get(timeout=TIMEOUT)
    check(not rc.is_failure, "a v5 client asking for more than --max-keep-alive is accepted")
    check(getattr(connack, "ServerKeepAlive", None) == 30, f"and told Server Keep Alive 30 [MQTT-3.2.2-21] ({connack})")
    c.disconnect()
    c.loop_stop()
    old = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ka3-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv311)
    got3 = queue.Queue()
    old.on_connect = lambda cl, ud, flags, rc, props: got3.put(rc)
    old.connect(host, port, keepalive=100)
    old.loop_start()
    rc = got3.get(timeout=TIMEOUT)
    check(rc.is_failure, f"a 3.1.1 client asking for more is refused ({rc})")
    old.loop_stop()


def passthrough(host, port):
    t = topic()
    sub = Peer(host, port)
    sub.subscribe(t)
    pub = Peer(host, port)
    sent = props(
        PacketTypes.PUBLISH,
        PayloadFormatIndicator=1,
        ContentType="application/json",
        ResponseTopic=f"{t}/reply",
        CorrelationData=b"\x00\x01corr",
        UserProperty=[("a", "1"), ("b", "2"), ("a", "3")],
    )
    pub.publish(t, b'{"x": 1}', properties=sent)
    p = sub.wait("message").properties
    check(p.PayloadFormatIndicator == 1, "Payload Format Indicator is forwarded [MQTT-3.3.2-4]")
    check(p.ContentType == "application/json", "Content Type is forwarded [MQTT-3.3.2-20]")
    check(p.ResponseTopic == f"{t}/reply", "Response Topic is forwarded [MQTT-3.3.2-15]")
    check(p.CorrelationData == b"\x00\x01corr", "Correlation Data is forwarded [MQTT-3.3.2-16]")
    check(p.UserProperty == [("a", "1"), ("b", "2"), ("a", "3")], "User Properties are forwarded in order [MQTT-3.3.2-17], [MQTT-3.3.2-18]")


def request_response(host, port):
    service = f"{topic()}/service"
    responder = Peer(host, port)
    responder.subscribe(service)
    requester = Peer(host, port)
    reply_to = f"{topic()}/replies/{requester.client_id}"
    requester.subscribe(reply_to)
    for n in (1, 2):
        requester.publish(service, f"question {n}".encode(), properties=props(
            PacketTypes.PUBLISH, ResponseTopic=reply_to, CorrelationData=f"req-{n}".encode()))
    for _ in (1, 2):
        req = responder.wait("message")
        answer = req.payload.replace(b"question", b"answer")
        responder.publish(req.properties.ResponseTopic, answer, properties=props(
            PacketTypes.PUBLISH, CorrelationData=req.properties.CorrelationData))
    answers = {requester.wait("message").properties.CorrelationData: None for _ in (1, 2)}
    check(set(answers) == {b"req-1", b"req-2"}, "each response comes back on the response topic with its correlation data")


def unsupported_auth_method(host, port):
    sock = socket.create_connection((host, port), timeout=TIMEOUT)
    method = b"NO-SUCH-METHOD"
    properties = b"\x15" + len(method).to_bytes(2, "big") + method
    body = b"\x00\x04MQTT\x05\x02\x00\x3c" + bytes([len(properties)]) + properties + b"\x00\x01a"
    sock.sendall(bytes([0x10, len(body)]) + body)
    header = recv_exactly(sock, 2)
    check(header[0] == 0x20, f"the server answers CONNACK ({header!r})")
    rest = recv_exactly(sock, header[1])
    check(rest[1] == 0x8C, f"with 0x8C Bad authentication method [MQTT-4.12.0-1] (got {rest[1]:#x})")
    check(sock.recv(16) == b"", "and closes the connection")


def connect_refusals(host, port):
    def refused(name, flags, properties, payload, expected, rule):
        sock = socket.create_connection((host, port), timeout=TIMEOUT)
        body = b"\x00\x04MQTT\x05" + bytes([flags]) + b"\x00\x3c" + bytes([len(properties)]) + properties + payload
        sock.sendall(bytes([0x10, len(body)]) + body)
        header = recv_exactly(sock, 2)
        check(header[0] == 0x20, f"{name}: the server answers CONNACK ({header!r})")
        rest = recv_exactly(sock, header[1])
        check(rest[1] == expected, f"{name}: reason {expected:#x} {rule} (got {rest[1]:#x})")
        check(sock.recv(16) == b"", f"{name}: and closes the connection")

    client_id = b"\x00\x03ref"
    twice = b"\x11\x00\x00\x00\x0a" * 2
    refused("Session Expiry Interval twice", 0x02, twice, client_id, 0x82, "Protocol Error (v5 section 3.1.2.11.2)")
    refused("reserved flag set", 0x03, b"", client_id, 0x81, "Malformed Packet [MQTT-3.1.2-3]")
    will = b"\x00" + b"\x00\x03a/#" + b"\x00\x01x"  # no will properties, topic a/#, payload x
    refused("wildcard will topic", 0x06, b"", client_id + will, 0x90, "Topic Name invalid [MQTT-3.1.3-11]")


def keep_alive_timeout(host, port):
    sock = socket.create_connection((host, port), timeout=TIMEOUT)
    # v5 CONNECT, clean start, keep alive 1 s, no properties, client id "ka".
    body = b"\x00\x04MQTT\x05\x02\x00\x01\x00\x00\x02ka"
    sock.sendall(bytes([0x10, len(body)]) + body)
    header = recv_exactly(sock, 2)
    check(header[0] == 0x20, "connected with keep alive 1 s")
    recv_exactly(sock, header[1])
    started = time.monotonic()
    header = recv_exactly(sock, 3)  # then silence: the next thing is the server's DISCONNECT
    waited = time.monotonic() - started
    check(header[0] == 0xE0 and header[2] == 0x8D, f"DISCONNECT 0x8D Keep alive timeout ({header!r})")
    check(1.0 <= waited <= 2.5, f"after 1.5 x keep alive [MQTT-3.1.2-22] (took {waited:.2f} s)")


def receive_maximum_flood(host, port):
    """Paho's MQTT 5 flow-control interoperability test, made harder: the
    client goes on sending after it broke Receive Maximum, so the server
    closes with unread input. Without the server's linger the kernel resets
    the socket and the reset overtakes the DISCONNECT: the client sees a
    broken pipe, not the reason [MQTT-3.3.4-9]."""
    sock = raw_v5_session(host, port)
    t = topic().encode()
    packets = []
    # QoS 2 publishes, never released: the 21st is one more than Receive Maximum (20).
    for packet_id in range(1, 41):
        body = len(t).to_bytes(2, "big") + t + packet_id.to_bytes(2, "big") + b"\x00" + b"x" * 100
        packets.append(bytes([0x34, len(body)]) + body)
    sock.sendall(b"".join(packets))
    # Keep sending (QoS 0, 16 KiB each, 1 MiB in all) while the server
    # answers and closes, as a client that has not read the answer yet would.
    body = len(t).to_bytes(2, "big") + t + b"\x00" + b"y" * 16_000
    filler = bytes([0x30]) + bytes([0x80 | (len(body) & 0x7F), len(body) >> 7]) + body
    for _ in range(64):
        try:
            sock.sendall(filler)
        except (BrokenPipeError, ConnectionResetError) as err:
            raise Failure(f"the server reset the connection while the client was still sending ({err})") from None
    check(True, "the client sent 1 MiB more without a reset")
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        raise Failure(f"connection reset after {len(data)} bytes: the reason was lost") from None
    # PUBRECs for the first 20, then DISCONNECT 0x93 Receive Maximum exceeded.
    kinds = [(first >> 4, body[:1]) for first, body in split_packets(data)]
    check(kinds[:20] == [(5, b"\x00")] * 20, f"the first 20 publishes got PUBREC ({kinds[:22]})")
    check((14, b"\x93") in kinds, f"the client read DISCONNECT 0x93 Receive Maximum exceeded ({kinds[20:]})")


def split_packets(data):
    """(first byte, body) of each whole MQTT packet in `data`."""
    packets, at = [], 0
    while at < len(data):
        length, shift, i = 0, 0, at + 1
        while i < len(data):
            length |= (data[i] & 0x7F) << shift
            shift += 7
            i += 1
            if not data[i - 1] & 0x80:
                break
        packets.append((data[at], data[i : i + length]))
        at = i + length
    return packets


def deep_name(levels, word="a"):
    return "/".join([word] * levels)


def topic_limits(host, port):
    """max_topic_levels (default 128): deeper filters and names are refused
    with the v5 codes, counted, and never delivered."""
    base = topic()
    watcher = Peer(host, port)
    watcher.subscribe(f"{base}/#")
    deep_topic = base + "/" + deep_name(200)
    deep_filter = base + "/" + deep_name(10_000, "+") + "/#"
    ok_topic = base + "/" + deep_name(125)

    peer = Peer(host, port)
    peer.client.subscribe(deep_filter, options=SubscribeOptions(qos=1))
    _, rcs = peer.wait("subscribe")
    check([rc.value for rc in rcs] == [0x8F], f"a 10,000-level filter gets SUBACK 0x8F Topic Filter invalid ({rcs})")
    peer.client.subscribe([(deep_name(129, "+"), SubscribeOptions(qos=1)), (f"{base}/+/#", SubscribeOptions(qos=1))])
    _, rcs = peer.wait("subscribe")
    check([rc.value for rc in rcs] == [0x8F, 1], f"one SUBSCRIBE: 129 levels refused, a normal filter granted ({rcs})")
    rc = peer.publish(deep_topic, b"too deep", qos=1)
    check(rc.value == 0x90, f"a 201-level topic gets PUBACK 0x90 Topic Name invalid ({rc})")
    raw = raw_v5_session(host, port)
    name = deep_topic.encode()
    body = len(name).to_bytes(2, "big") + name + b"\x00\x07\x00" + b"too deep"
    raw.sendall(bytes([0x34, 0x80 | (len(body) & 0x7F), len(body) >> 7]) + body)
    pubrec = recv_exactly(raw, 5)
    check(pubrec == b"\x50\x03\x00\x07\x90", f"and PUBREC 0x90 at QoS 2, which ends the flow ({pubrec!r})")
    peer.client.publish(deep_topic, b"too deep", qos=0)
    peer.wait("publish")  # paho reports a QoS 0 publish once written
    peer.publish(ok_topic, b"deep enough", qos=1)
    msg = watcher.wait("message")
    check(msg.topic == ok_topic and msg.payload == b"deep enough", f"a 126-level topic is delivered ({len(msg.topic)} bytes)")
    watcher.nothing("message", timeout=0.5)
    check(True, "no refused message reached a subscriber of #")


    # A will topic beyond the limit: CONNACK 0x90.
    sock = socket.create_connection((host, port), timeout=TIMEOUT)
    will_topic = deep_name(300).encode()
    client_id = b"deep-will"
    body = (b"\x00\x04MQTT\x05\x06\x00\x3c\x00" + len(client_id).to_bytes(2, "big") + client_id
            + b"\x00" + len(will_topic).to_bytes(2, "big") + will_topic + b"\x00\x01w")
    sock.sendall(bytes([0x10, 0x80 | (len(body) & 0x7F), len(body) >> 7]) + body)
    connack = recv_exactly(sock, 5)
    check(connack == b"\x20\x03\x00\x90\x00", f"a 300-level will topic gets CONNACK 0x90 ({connack!r})")
    check(sock.recv(16) == b"", "and the connection is closed")

    old = Peer(host, port, v311=True)
    old.client.subscribe(deep_filter, qos=1)
    _, rcs = old.wait("subscribe")
    check([rc.value for rc in rcs] == [0x80], f"a 3.1.1 client's deep filter gets SUBACK 0x80 ({rcs})")
    old.client.publish(deep_topic, b"too deep", qos=1)
    rc = old.wait("disconnect")
    check(True, f"a 3.1.1 client's deep PUBLISH closes its connection ({rc})")
    watcher.nothing("message", timeout=0.5)
    peer.publish(ok_topic, b"still serving", qos=1)
    check(watcher.wait("message").payload == b"still serving", "the broker goes on serving")
    counter = Peer(host, port)
    counter.subscribe("$SYS/broker/topics/refused")
    # The retained value may be from the tick before the last refusals;
    # the broker publishes it again every second (--sys-interval 1).
    refused = int(counter.wait("message").payload)
    deadline = time.time() + TIMEOUT
    while refused < 7 and time.time() < deadline:
        refused = int(counter.wait("message").payload)
    check(refused >= 7, f"$SYS/broker/topics/refused counts them ({refused})")


def deep_structures(host, port):
    """The regression test of issue 21 (one 10,000-level SUBSCRIBE overflowed
    the broker's stack), with --max-topic-levels raised so the deep filters
    reach the topic index: several clients subscribe to 10,000- and
    30,000-level filters, some vanish, some leave cleanly, some stay;
    deep retained messages are set and found; the broker keeps serving."""
    base = topic()
    for levels in (10_000, 30_000):
        plus = base + "/" + deep_name(levels, "+") + "/#"
        literal = base + "/" + deep_name(levels)
        stay = Peer(host, port)
        stay.subscribe(plus)
        stay.subscribe(literal)
        vanishing = Peer(host, port)
        vanishing.subscribe(plus)
        vanishing.subscribe(literal + "/#")
        leaving = Peer(host, port, v311=True)
        leaving.subscribe(literal)
        vanishing.vanish()
        leaving.close()
        pub = Peer(host, port)
        pub.publish(literal, b"deep", qos=1, retain=True)
        got = stay.wait("message")
        check(got.topic == literal and got.payload == b"deep", f"a {levels}-level topic reached a {levels}-level subscriber")
        late = Peer(host, port)
        late.subscribe(base + "/" + deep_name(levels // 2, "+") + "/#")
        check(late.wait("message").retain, f"a wildcard subscriber arriving later gets the deep retained message")
        pub.publish(literal, b"", qos=1, retain=True)
        stay.close()
        late.close()
        pub.close()
    fresh = Peer(host, port, v311=True)
    fresh.subscribe(f"{base}/x")
    Peer(host, port).publish(f"{base}/x", b"alive", qos=1)
    check(fresh.wait("message").payload == b"alive", "the broker keeps serving")


def read_varint(data, at):
    value, shift = 0, 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def publish_topic_and_alias(body, qos):
    """(topic, Topic Alias or None) of a v5 PUBLISH body."""
    length = int.from_bytes(body[:2], "big")
    topic = body[2 : 2 + length]
    at = 2 + length + (2 if qos else 0)
    props_len, at = read_varint(body, at)
    props, alias, i = body[at : at + props_len], None, 0
    while i < len(props):
        if props[i] == 0x23:
            alias = int.from_bytes(props[i + 1 : i + 3], "big")
            i += 3
        else:
            raise Failure(f"unexpected property {props[i]:#x} in {props!r}")
    return topic, alias


def outbound_alias_bound(host, port):
    """A subscriber allowing 65,535 topic aliases gets them for its first
    topics only while their bytes stay within 64 KiB: the broker keeps the
    topics it aliases, and a client must not make it keep gigabytes."""
    sock = socket.create_connection((host, port), timeout=TIMEOUT)
    props = b"\x22\xff\xff"  # Topic Alias Maximum 65535
    body = b"\x00\x04MQTT\x05\x02\x00\x3c" + bytes([len(props)]) + props + b"\x00\x08aliasing"
    sock.sendall(bytes([0x10, len(body)]) + body)
    header = recv_exactly(sock, 2)
    recv_exactly(sock, header[1])
    base = topic()
    sub = len(f"{base}/#").to_bytes(2, "big") + f"{base}/#".encode()
    body = b"\x00\x01\x00" + sub + b"\x00"
    sock.sendall(bytes([0x82, len(body)]) + body)
    check(recv_exactly(sock, 6)[0] == 0x90, "subscribed")
    names = [f"{base}/{i}/" + "x" * 30_000 for i in range(3)]
    pub = Peer(host, port)
    for name in names + names[:1]:
        pub.client.publish(name, b"p", qos=0)
        pub.wait("publish")
    seen = []
    buf = b""
    while len(seen) < 4:
        chunk = sock.recv(65536)
        if not chunk:
            raise Failure("closed")
        buf += chunk
        packets, rest = [], buf
        while rest:
            length, at = read_varint(rest, 1)
            if len(rest) < at + length:
                break
            packets.append((rest[0], rest[at : at + length]))
            rest = rest[at + length :]
        buf = rest
        for first, body in packets:
            if first >> 4 == 3:
                seen.append(publish_topic_and_alias(body, (first >> 1) & 3))
    check(seen[0] == (names[0].encode(), 1) and seen[1] == (names[1].encode(), 2), "the first two 30 kB topics get aliases 1 and 2")
    check(seen[2] == (names[2].encode(), None), "the third, past 64 KiB of aliased topics, goes without one")
    check(seen[3] == (b"", 1), "the first topic again goes as its alias alone")


def raw_connect(host, port, client_id, properties=b"", rcvbuf=None):
    """A bare v5 socket that sent CONNECT; the CONNACK is left unread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(TIMEOUT)
    sock.connect((host, port))
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x05\x02\x00\x3c" + bytes([len(properties)]) + properties + len(cid).to_bytes(2, "big") + cid
    sock.sendall(bytes([0x10, len(body)]) + body)
    return sock


def read_to_end(sock):
    data = b""
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            return data
        data += chunk


def tiny_maximum_packet_size(host, port):
    """A client's Maximum Packet Size bounds every packet the server sends
    it [MQTT-3.1.2-24], CONNACK and DISCONNECT included: they drop their
    optional properties and Reason String to fit."""
    sock = raw_connect(host, port, "tiny", b"\x27" + (16).to_bytes(4, "big"))
    header = recv_exactly(sock, 2)
    connack = header + recv_exactly(sock, header[1])
    check(connack[0] == 0x20 and connack[3] == 0x00, f"connected ({connack!r})")
    check(len(connack) <= 16, f"a {len(connack)}-byte CONNACK to a client allowing 16")
    # A topic alias above the maximum: DISCONNECT 0x94, here without its
    # Reason String (topic_alias_invalid shows it with one).
    body = b"\x00\x03t/a" + b"\x03\x23" + (60000).to_bytes(2, "big") + b"x"
    sock.sendall(bytes([0x30, len(body)]) + body)
    rest = read_to_end(sock)
    check(rest[:1] == b"\xe0" and rest[2:3] == b"\x94", f"DISCONNECT 0x94 ({rest!r})")
    check(len(rest) <= 16, f"a {len(rest)}-byte DISCONNECT to a client allowing 16")


def takeover_mid_write(host, port):
    """A connection taken over while the broker's write to it is half done
    (its client reads slowly) gets the rest of what was being written and
    then DISCONNECT 0x8E, never the start of it again: the old client reads
    an intact stream. 6 MB outgrow the kernel's buffers on loopback."""
    t = topic()
    old = raw_connect(host, port, "taken-mid-write", rcvbuf=4096)
    header = recv_exactly(old, 2)
    recv_exactly(old, header[1])
    sub = len(t).to_bytes(2, "big") + t.encode()
    body = b"\x00\x01\x00" + sub + b"\x00"
    old.sendall(bytes([0x82, len(body)]) + body)
    check(recv_exactly(old, 6)[0] == 0x90, "the old connection subscribed")
    payload = bytes(range(256)) * (6 * 4096)
    pub = Peer(host, port)
    pub.client.publish(t, payload, qos=0)
    pub.wait("publish")
    time.sleep(0.5)  # the broker's write to `old` stalls: it does not read
    new = raw_connect(host, port, "taken-mid-write")
    check(recv_exactly(new, 2)[0] == 0x20, "a new connection took the session over")
    stream = read_to_end(old)
    packets = split_packets(stream)
    kinds = [first >> 4 for first, _ in packets]
    check(kinds == [3, 14], f"the old client read the PUBLISH, then DISCONNECT ({kinds})")
    first, body = packets[0]
    topic_len = int.from_bytes(body[:2], "big")
    got = body[2 + topic_len + 1 :]
    check(got == payload, f"the {len(payload)}-byte payload arrived intact ({len(got)} bytes)")
    check(packets[1][1][:1] == b"\x8e", f"DISCONNECT 0x8E Session taken over ({packets[1][1]!r})")


SCENARIOS = {
    "tiny_maximum_packet_size": tiny_maximum_packet_size,
    "takeover_mid_write": takeover_mid_write,
    "outbound_alias_bound": outbound_alias_bound,
    "receive_maximum_flood": receive_maximum_flood,
    "topic_limits": topic_limits,
    "deep_structures": deep_structures,
    "keep_alive_timeout": keep_alive_timeout,
    "unsupported_auth_method": unsupported_auth_method,
    "server_keep_alive": server_keep_alive,
    "passthrough": passthrough,
    "request_response": request_response,
    "shared_round_robin": shared_round_robin,
    "shared_sticky": lambda h, p: shared_strategy(h, p, "sticky"),
    "shared_random": lambda h, p: shared_strategy(h, p, "random"),
    "shared_inflight_moves": shared_inflight_moves,
    "shared_expiry_moves": shared_expiry_moves,
    "response_information": response_information,
    "connect_refusals": connect_refusals,
    "topic_alias_invalid": topic_alias_invalid,
    "subscription_identifiers": subscription_identifiers,
    "session_expiry": session_expiry,
    "will_delay": will_delay,
    "disconnect_with_will": disconnect_with_will,
    "message_expiry": message_expiry,
    "maximum_packet_size": maximum_packet_size,
    "no_local": no_local,
    "retain_as_published": retain_as_published,
    "retain_handling": retain_handling,
    "no_matching_subscribers": no_matching_subscribers,
    "takeover": takeover,
}


if __name__ == "__main__":
    run(SCENARIOS)
