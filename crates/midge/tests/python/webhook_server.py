#!/usr/bin/env python3
"""A small webhook service for midge's HTTP webhook policy (Python's own http.server).

Usage: python3 webhook_server.py [--cert C.crt --key C.key]

Listens on 127.0.0.1 on a free port (https with --cert/--key) and prints
`listening PORT`, then one `request: {json}` line per question it gets. Its rules:
  connect    alice/secret and bin/b"\\xff\\x00" (sent as password_base64) are allowed,
             with {"result": "allow"}; everyone else gets {"result": "deny"}.
  publish, subscribe, by topic:
    allowed/...   204 No Content (an empty 2xx answer allows)
    slow/...      answers after 3 s (longer than the broker's timeout in the test)
    status/N/...  status N, empty body
    garbage/...   200 with a body that is not JSON
    anything else {"result": "deny"}
Run by crates/midge/tests/interop_webhook.rs.
"""

import argparse
import json
import ssl
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def decide(q):
    if q["action"] == "connect":
        ok = (q.get("username"), q.get("password"), q.get("password_base64")) in (
            ("alice", "secret", None),
            ("bin", None, "/wA="),
        )
        return 200, {"result": "allow" if ok else "deny"}
    topic = q["topic"]
    if topic.startswith("allowed/"):
        return 204, None
    if topic.startswith("slow/"):
        time.sleep(3)
        return 200, {"result": "allow"}
    if topic.startswith("status/"):
        return int(topic.split("/")[1]), None
    if topic.startswith("garbage/"):
        return 200, "yes please"
    return 200, {"result": "deny"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the broker's client pools connections

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length)
        if self.headers.get("Content-Type") != "application/json":
            self.send_error(415)
            return
        question = json.loads(body)
        print("request: " + json.dumps(question, sort_keys=True), flush=True)
        status, answer = decide(question)
        data = b"" if answer is None else (answer if isinstance(answer, str) else json.dumps(answer)).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if args.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"listening {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
