"""Small real-socket clients shared by the tests."""

import http.client
import json
import selectors
import socket
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


def post_and_leave(port, upstream, body=STREAMED):
    """Send a request, wait until the upstream has its first attempt, then hang up without reading."""
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        sock.sendall(b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
        upstream.wait_attempts(1, timeout=10)
    finally:
        sock.close()


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


def held_clients(port, count, raw, timeout=60.0):
    """Open ``count`` connections at once, send ``raw`` on each, then read every answer to its close."""
    selector = selectors.DefaultSelector()
    buffers = {}
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        sock.sendall(raw)
        sock.setblocking(False)
        buffers[sock] = bytearray()
        selector.register(sock, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    remaining = set(buffers)
    while remaining and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1.0):
            try:
                data = key.fileobj.recv(65536)
            except OSError:
                data = b""
            if data:
                buffers[key.fileobj].extend(data)
            else:
                selector.unregister(key.fileobj)
                remaining.discard(key.fileobj)
    for sock in buffers:
        sock.close()
    selector.close()
    return [bytes(data) for data in buffers.values()]


def main_in_process(argv, capsys):
    """``python proxy.py ARGV`` as main() in this process: its exit code, stdout and stderr."""
    from retry_shield.main import main
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *texts):
    """A start-up error as the user sees it: exit 2, one line naming what is wrong, then what to do."""
    assert code == 2, err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("proxy.py: error: ") and "Traceback" not in err
    for text in texts:
        assert text in err, err
    assert "; " in err


def assert_cost_is_linear(cpu_of, small, large, slack=0.01):
    """4x the input costs less than 6x the CPU (``cpu_of(input)`` in seconds), best of 5 interleaved
    runs so both sizes see the same machine; ``slack`` seconds allow a constant cost such as a large
    buffer outgrowing the CPU caches. Quadratic work would cost about 16x."""
    small_cpu = large_cpu = float("inf")
    for _ in range(5):
        small_cpu = min(small_cpu, cpu_of(small))
        large_cpu = min(large_cpu, cpu_of(large))
    assert large_cpu < 6 * small_cpu + slack, "%.1f ms for %d bytes, %.1f ms for %d bytes" % (
        small_cpu * 1000, len(small), large_cpu * 1000, len(large))
