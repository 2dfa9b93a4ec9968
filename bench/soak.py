#!/usr/bin/env python3
"""Soak: 10,000 requests in a row through a real proxy process, failures mixed in.

Prints the proxy process's memory (RSS), open file descriptors and threads every
1,000 requests, so a leak of buffers, sockets or threads shows as a rising column.
Standard library only; Linux (/proc). Not part of the test suite:

    python bench/soak.py [--requests 10000]
"""

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

from tests.fake_upstream import FakeUpstream, cut, error_event, good, reset, status  # noqa: E402

# One request in four meets a failure first; the shield must absorb it and leak nothing.
MIXES = [
    (good(),),
    (status(429, headers={"retry-after-ms": "1"}), good()),
    (good(),),
    (cut(300), good()),
    (good(),),
    (reset(), good()),
    (good(),),
    (error_event(), good()),
]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proc_status(pid):
    fields = {}
    with open("/proc/%d/status" % pid) as status_file:
        for line in status_file:
            name, _, value = line.partition(":")
            fields[name] = value.strip()
    return {"rss_mb": int(fields["VmRSS"].split()[0]) / 1024.0, "threads": int(fields["Threads"]),
            "fds": len(os.listdir("/proc/%d/fd" % pid))}


def wait_for_health(port, deadline):
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10000)
    args = parser.parse_args(argv)
    if not os.path.isdir("/proc/self/fd"):
        print("soak.py needs Linux's /proc to read the proxy's memory and descriptors")
        return 0
    upstream = FakeUpstream().start()
    port = free_port()
    env = dict(os.environ, AZURE_ENDPOINT=upstream.url + "/v1", PORT=str(port), LOG_LEVEL="ERROR",
               RETRY_BASE_DELAY="0.001", RETRY_MAX_DELAY="0.002")
    proxy = subprocess.Popen([sys.executable, os.path.join(HERE, "proxy.py"), "--env-file", os.devnull], env=env)
    body = json.dumps({"model": "m", "input": "soak", "stream": True})
    rows = []
    failures = 0
    started = time.monotonic()
    try:
        wait_for_health(port, time.monotonic() + 20)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for number in range(1, args.requests + 1):
            upstream.plan(*MIXES[number % len(MIXES)])
            conn.request("POST", "/v1/responses", body=body)
            response = conn.getresponse()
            payload = response.read()
            if response.status != 200 or b"response.completed" not in payload:
                failures += 1
            if number % 1000 == 0 or number == args.requests:
                upstream.reset()  # the fake's own records are not the proxy's memory
                rows.append((number, proc_status(proxy.pid)))
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)
        upstream.stop()
    elapsed = time.monotonic() - started
    print("%10s %10s %8s %8s" % ("requests", "RSS MB", "fds", "threads"))
    for number, figures in rows:
        print("%10d %10.1f %8d %8d" % (number, figures["rss_mb"], figures["fds"], figures["threads"]))
    first, last = rows[0][1], rows[-1][1]
    print("%d requests in %.1f s, %d failed; from the first to the last sample: RSS %+.1f MB, fds %+d, "
          "threads %+d" % (args.requests, elapsed, failures, last["rss_mb"] - first["rss_mb"],
                           last["fds"] - first["fds"], last["threads"] - first["threads"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
