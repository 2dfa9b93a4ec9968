"""Load and faults, in sizes fit for the suite (bench/bench.py runs the full-size versions)."""

import gc
import json
import logging
import os
import socket
import threading
import time

import pytest

from tests.fake_upstream import FakeUpstream, cut, error_event, good, reset, status
from tests.helpers import held_clients, request

REQUEST = b'{"model": "m", "input": "hi", "stream": true}'


def raw_request(port):
    return (b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (len(REQUEST), REQUEST))


def test_a_thousand_clients_at_once_are_all_answered_and_logged_whole(upstream, make_proxy, tmp_path):
    upstream.plan(good(delay=1.0))
    usage_log = tmp_path / "usage.jsonl"
    # A loaded machine: no retries wanted here
    shield = make_proxy(upstream, UPSTREAM_TIMEOUT="30", USAGE_LOG=str(usage_log))
    answers = held_clients(shield.port, 1000, raw_request(shield.port))
    assert len(answers) == 1000
    assert sum(answer.startswith(b"HTTP/1.1 200") for answer in answers) == 1000
    assert upstream.attempts == 1000
    # Each usage line is written after its answer: the last ones may still be on their way.
    deadline = time.monotonic() + 10
    while shield.server.active and time.monotonic() < deadline:
        time.sleep(0.02)
    lines = usage_log.read_bytes().split(b"\n")
    assert lines.pop() == b""  # the file ends with a whole line
    assert [json.loads(line)["outcome"] for line in lines] == ["delivered"] * 1000


def open_fds():
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to count file descriptors")
def test_many_requests_with_failures_leak_nothing(upstream, make_proxy, monkeypatch):
    # pytest keeps every log record it captures, with the arguments the proxy's code made for it
    # (about 640 bytes a request here): that is the test harness, not the proxy, so none reaches it.
    quiet = logging.getLogger("retry_shield")
    monkeypatch.setattr(quiet, "propagate", False)
    monkeypatch.setattr(quiet, "handlers", [logging.NullHandler()])
    upstream.plan(status(429), good(), cut(100), good(), reset(), good(), error_event(), good())
    shield = make_proxy(upstream)

    def batch(count):
        for _ in range(count):
            upstream.plan(status(429), good(), cut(100), good(), reset(), good(), error_event(), good())
            code, _, _ = request(shield.port)
            assert code == 200

    batch(50)  # warm-up: let every lazy allocation happen
    baseline_threads = threading.active_count()
    settle(baseline_threads)
    fds = open_fds()
    import tracemalloc
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    pooled = shield.server.buffers.pooled_bytes
    batch(400)
    upstream.reset()
    settle(baseline_threads)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    # Answer buffers kept for reuse are bounded by the pool (tests/test_reading.py), not a leak.
    pooled = shield.server.buffers.pooled_bytes - pooled
    # pytest keeps every log record it captures: that is the test harness, not the proxy.
    harness = [tracemalloc.Filter(False, "*/logging/*"), tracemalloc.Filter(False, "*/_pytest/*")]
    grown = sum(stat.size_diff for stat in after.filter_traces(harness).compare_to(
        before.filter_traces(harness), "filename"))
    assert grown - pooled < 256 * 1024, "%d bytes more after 400 requests (%d pooled)" % (grown, pooled)
    assert open_fds() <= fds


def settle(threads, timeout=10.0):
    """Wait until the handler threads of finished requests have ended (their sockets with them)."""
    deadline = time.monotonic() + timeout
    while threading.active_count() > threads and time.monotonic() < deadline:
        time.sleep(0.02)
    assert threading.active_count() <= threads, "threads left running: %d" % threading.active_count()
    gc.collect()


def test_upstream_vanishing_mid_load_is_absorbed(make_proxy):
    first = FakeUpstream().start()
    port = first.port
    first.plan(good(delay=5.0))  # slow answers: they are in flight when the upstream dies
    shield = make_proxy(first, RETRY_BASE_DELAY="0.2", RETRY_MAX_DELAY="0.5")
    results = []
    clients = [threading.Thread(target=lambda: results.append(request(shield.port))) for _ in range(20)]
    for client in clients:
        client.start()
    first.wait_attempts(20)
    first.stop()  # killed: in-flight attempts break, new ones are refused
    second = FakeUpstream(port=port).start()
    try:
        second.plan(good(text="after the restart"))
        for client in clients:
            client.join(60)
        assert [result[0] for result in results] == [200] * 20
        assert all(result[2] == second.sent[-1] for result in results)
        assert b"response.completed" in second.sent[-1]
        assert second.attempts >= 20
    finally:
        second.stop()


def test_retries_work_with_descriptors_above_1023(upstream, make_proxy):
    """select() cannot watch descriptors above 1023; a busy proxy reaches them."""
    ballast = [socket.socket() for _ in range(1100)]
    try:
        upstream.plan(status(500), good())
        shield = make_proxy(upstream)
        code, _, body = request(shield.port)
        assert code == 200 and body == upstream.sent[-1] and upstream.attempts == 2
    finally:
        for sock in ballast:
            sock.close()
