#!/usr/bin/env python3
"""The floor of any relay built like proxy.py: what the standard library alone costs.

A ThreadingHTTPServer whose handler forwards each POST over a kept-alive http.client
connection, reads the whole answer and sends it back: no inspection, no retries, no
guards, no logging. Not a product, a yardstick; measure it as the proxy is measured:

    python bench/bench.py --proxy bench/floor_relay.py

It reads the same PORT and AZURE_ENDPOINT settings as proxy.py (and ignores the rest).
"""

import http.client
import http.server
import os
import threading
import urllib.parse

UPSTREAM = urllib.parse.urlsplit(os.environ.get("AZURE_ENDPOINT", "http://127.0.0.1:8000"))
connections = threading.local()  # one kept-alive upstream connection per handler thread


class Relay(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    wbufsize = 16 * 1024

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass

    def do_GET(self):  # /health, for the benchmark's readiness check
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        conn = getattr(connections, "conn", None)
        if conn is None:
            conn = connections.conn = http.client.HTTPConnection(UPSTREAM.hostname, UPSTREAM.port)
        conn.request("POST", self.path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        answer = response.read()
        self.send_response(response.status)
        self.send_header("Content-Type", response.getheader("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


class RelayServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 4096


def main():
    server = RelayServer(("127.0.0.1", int(os.environ.get("PORT", "8888"))), Relay)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
