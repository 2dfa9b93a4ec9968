"""Small real-socket clients shared by the tests."""

import http.client
import socket
import json
import time

STREAMED = json.dumps({"model": "m", "input": "hi", "stream": True}).encode()


def request(port, method="POST", path="/v1/responses", body=STREAMED, headers=None, host=None, timeout=30):
    """One request on a fresh connection: (status, headers with lower-case names, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=host is not None, skip_accept_encoding=True)
        if host is not None:
            conn.putheader("Host", host)
        all_headers = {"Content-Type": "application/json"}
        all_headers.update(headers or {})
        if body is not None:
            all_headers["Content-Length"] = str(len(body))
        for name, value in all_headers.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def post(port, path="/v1/responses", body=STREAMED, headers=None, timeout=30):
    """POST a dict (sent as JSON) or bytes: (status, headers with lower-case names, body bytes)."""
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    return request(port, "POST", path, body, headers, timeout=timeout)


def free_port():
    """A port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(port, timeout=20.0):
    """Poll /health until it answers 200, against a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if request(port, "GET", "/health", body=None)[0] == 200:
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)
