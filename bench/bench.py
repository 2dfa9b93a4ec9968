#!/usr/bin/env python3
"""Benchmark: the proxy beside a direct connection to the same fast local upstream.

One run starts a fake upstream serving prebuilt SSE bodies from memory and the real
proxy as a separate process, then measures side by side (medians of repeated runs,
ratios, because shared machines are noisy):

1. latency of a ~500 KB Responses stream (2,000 deltas), direct and through the proxy;
2. the proxy's CPU per MB relayed and its peak memory growth on a ~20 MB stream;
3. throughput of 32 concurrent clients sending small streamed requests;
4. 1,000 clients held at once on an upstream that waits 2 s before answering.

Standard library only; Linux for the CPU and memory figures (/proc). Not a test:
it prints one table and exits 0.

    python bench/bench.py [--quick]
"""

import argparse
import http.client
import http.server
import json
import multiprocessing
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

from tests.fake_upstream import chat_stream, responses_stream  # noqa: E402
from tests.helpers import held_clients  # noqa: E402

REQUEST = json.dumps({"model": "bench", "input": "hi", "stream": True})
WORDS = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "


# ---------------------------------------------------------------------------
# A fast upstream: whole answers prebuilt on the wire, one write each
# ---------------------------------------------------------------------------


def _chunked(body, size):
    if size == "event":
        pieces = [piece + b"\n\n" for piece in body.split(b"\n\n") if piece]
    else:
        pieces = [body[start:start + size] for start in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


def _wire(body, framing):
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    if framing == "length":
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    size = "event" if framing == "event" else 16384
    return head + b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(body, size)


def build_answers():
    big_text = (WORDS * 40000)[:2400000]
    bodies = {
        "500k": responses_stream((WORDS * 2000)[:16000], deltas=2000),
        "20m": responses_stream(big_text, deltas=60000),
        "small": responses_stream("A short answer.", deltas=4),
        "chat": chat_stream("A short answer.", deltas=4),
    }
    answers = {}
    for name, body in bodies.items():
        for framing in ("length", "chunked", "event"):
            answers[name, framing] = (_wire(body, framing), len(body))
    return answers


class BenchHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
        if query.get("delay"):
            time.sleep(float(query["delay"]))
        wire, _ = self.server.answers[query.get("size", "small"), query.get("framing", "length")]
        self.wfile.write(wire)


class BenchUpstream(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 4096

    def __init__(self, answers):
        self.answers = answers
        super().__init__(("127.0.0.1", 0), BenchHandler)


# ---------------------------------------------------------------------------
# The proxy process and what the OS says about it
# ---------------------------------------------------------------------------


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_proxy(upstream_port):
    port = free_port()
    env = dict(os.environ, AZURE_ENDPOINT="http://127.0.0.1:%d/v1" % upstream_port, PORT=str(port),
               LOG_LEVEL="ERROR", UPSTREAM_TIMEOUT="60", MAX_RESPONSE_BYTES=str(1 << 30))
    process = subprocess.Popen([sys.executable, os.path.join(HERE, "proxy.py"), "--env-file", os.devnull], env=env)
    deadline = time.monotonic() + 20
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            conn.getresponse().read()
            return process, port
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit("the proxy did not start")
            time.sleep(0.05)


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / float(os.sysconf("SC_CLK_TCK"))


def peak_rss(pid):
    with open("/proc/%d/status" % pid) as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


# ---------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------


def timed_requests(port, query, count):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    times = []
    for _ in range(count):
        started = time.perf_counter()
        conn.request("POST", "/v1/responses?" + query, body=REQUEST)
        response = conn.getresponse()
        body = response.read()
        times.append(time.perf_counter() - started)
        assert response.status == 200 and body.endswith(b"\n\n"), response.status
    conn.close()
    return times


def latency(direct_port, proxy_port, query, rounds, per_round):
    """Median ms direct and through the proxy, interleaved in rounds so drift hits both alike."""
    direct, proxied = [], []
    timed_requests(direct_port, query, 5)
    timed_requests(proxy_port, query, 5)
    for _ in range(rounds):
        direct += timed_requests(direct_port, query, per_round)
        proxied += timed_requests(proxy_port, query, per_round)
    return statistics.median(direct) * 1000, statistics.median(proxied) * 1000


def cost_per_mb(upstream_port, size_bytes, repeats):
    process, port = start_proxy(upstream_port)
    try:
        timed_requests(port, "size=small", 20)  # warm-up: imports, threads, first buffers
        baseline = peak_rss(process.pid)
        used = []
        for _ in range(repeats):
            before = cpu_seconds(process.pid)
            timed_requests(port, "size=20m&framing=chunked", 1)
            used.append(cpu_seconds(process.pid) - before)
        growth = (peak_rss(process.pid) - baseline) / float(size_bytes)
    finally:
        process.terminate()
        process.wait(timeout=30)
    return statistics.median(used) * 1000 / (size_bytes / 1e6), growth


def _client_process(port, threads, seconds, results):
    done, errors = [0], [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def loop():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < stop_at:
            try:
                conn.request("POST", "/v1/responses?size=small", body=REQUEST)
                response = conn.getresponse()
                ok = response.status == 200 and b"response.completed" in response.read()
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            with lock:
                done[0] += ok
                errors[0] += not ok

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    results.put((done[0], errors[0]))


def throughput(port, clients, seconds):
    # Clients in 4 processes: one Python process would measure its own GIL, not the proxy.
    processes, per_process = 4, clients // 4
    results = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=_client_process, args=(port, per_process, seconds, results))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    totals = [results.get(timeout=seconds + 60) for _ in workers]
    for worker in workers:
        worker.join()
    return sum(done for done, _ in totals) / float(seconds), sum(errors for _, errors in totals)


def held(port, count, delay):
    raw = ("POST /v1/responses?size=small&delay=%s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n"
           "Connection: close\r\n\r\n%s" % (delay, len(REQUEST), REQUEST)).encode()
    started = time.monotonic()
    answers = held_clients(port, count, raw)
    return sum(answer.startswith(b"HTTP/1.1 200") for answer in answers), time.monotonic() - started


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------


def machine():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return "%d cores, %s, Python %s, %s" % (os.cpu_count() or 0, model, platform.python_version(),
                                            platform.system())


def main(argv=None):
    parser = argparse.ArgumentParser(description="Proxy beside a direct connection to a fast local upstream.")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (about half a minute)")
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 8192), hard), hard))
    rounds, per_round, repeats, seconds = (4, 10, 3, 2) if args.quick else (10, 20, 5, 5)

    answers = build_answers()
    upstream = BenchUpstream(answers)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    up_port = upstream.server_address[1]
    proxy, proxy_port = start_proxy(up_port)
    rows = []
    try:
        size_500k = answers["500k", "length"][1]
        for framing, label in (("length", "Content-Length"), ("event", "a chunk per event")):
            direct, proxied = latency(up_port, proxy_port, "size=500k&framing=" + framing, rounds, per_round)
            target = "<= 1 ms added" if framing == "length" else "(for reference)"
            verdict = ("pass" if proxied - direct <= 1.0 else "FAIL") if framing == "length" else ""
            rows.append(("latency, %d KB stream, %s (median ms)" % (size_500k // 1024, label), "%.2f" % direct,
                         "%.2f" % proxied, "%+.2f ms, x%.2f" % (proxied - direct, proxied / direct), target,
                         verdict))
        size_20m = answers["20m", "chunked"][1]
        ms_per_mb, growth = cost_per_mb(up_port, size_20m, repeats)
        rows.append(("proxy CPU per MB, %.0f MB stream" % (size_20m / 1e6), "", "%.2f ms" % ms_per_mb, "",
                     "<= 2 ms", "pass" if ms_per_mb <= 2.0 else "FAIL"))
        rows.append(("proxy peak memory growth / answer size", "", "x%.2f" % growth, "", "<= 1.3",
                     "pass" if growth <= 1.3 else "FAIL"))
        direct_rps, direct_errors = throughput(up_port, 32, seconds)
        proxy_rps, proxy_errors = throughput(proxy_port, 32, seconds)
        ratio = proxy_rps / direct_rps if direct_rps else 0.0
        rows.append(("throughput, 32 clients (req/s; errors)", "%.0f; %d" % (direct_rps, direct_errors),
                     "%.0f; %d" % (proxy_rps, proxy_errors), "x%.2f" % ratio, ">= 0.7, 0 errors",
                     "pass" if ratio >= 0.7 and proxy_errors == 0 else "FAIL"))
        answered, wall = held(proxy_port, 1000, 2)
        rows.append(("1,000 held clients, upstream waits 2 s", "", "%d answered in %.2f s" % (answered, wall), "",
                     "1000, ~2 s", "pass" if answered == 1000 and wall < 4 else "FAIL"))
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)
        upstream.shutdown()
    print("retry-shield benchmark, %s, %s" % (time.strftime("%Y-%m-%d"), machine()))
    header = ("metric", "direct", "proxy", "added / ratio", "target", "")
    widths = [max(len(str(row[index])) for row in rows + [header]) for index in range(len(header))]
    for row in [header] + rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
