"""The proxy's cost grows linearly with the answer: a quadratic regression fails here.

End to end through the real proxy: ``python proxy.py`` as its own process in front of
the scripted fake upstream, a kept-alive http.client connection as the client. The
proxy's CPU is what Linux charges to its threads (/proc/PID/task/*/schedstat, in
nanoseconds), so the client and the fake upstream in this process do not count, and
the best of several runs per size keeps a busy machine's noise out (noise only adds).

A 4x larger answer must cost less than 6x the CPU. Linear work gives about 4x (a little
less: some cost is per request); re-scanning the buffer on every chunk, or building it
by concatenation, gives 10x and more at these sizes.
"""

import http.client
import os
import subprocess
import sys

import pytest

import proxy
from retry_shield.config import SETTINGS
from tests.fake_upstream import good
from tests.helpers import STREAMED, free_port, wait_for_health

WORDS = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
SMALL = (WORDS * 2000, 8000)  # about 2 MB of Responses stream
LARGE = (WORDS * 8000, 32000)  # about 8 MB
RUNS = 5


def cpu_ns(pid):
    """Nanoseconds of CPU charged so far to the live threads of process ``pid``."""
    total = 0
    for task in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, task)) as stat:
                total += int(stat.read().split()[0])
        except OSError:
            pass  # a thread that just ended
    return total


@pytest.fixture
def proxy_process(upstream, request):
    if not os.path.exists("/proc/%d/task/%d/schedstat" % (os.getpid(), os.getpid())):
        pytest.skip("needs Linux's /proc/PID/task/*/schedstat to read the proxy's CPU time")
    port = free_port()
    settings = {setting.env for setting in SETTINGS}  # none of the caller's may leak in
    env = {name: value for name, value in os.environ.items() if name not in settings}
    env.update(AZURE_ENDPOINT=upstream.url + "/v1", HOST="127.0.0.1", PORT=str(port), LOG_LEVEL="WARNING",
               UPSTREAM_API=getattr(request, "param", "auto"))
    process = subprocess.Popen([sys.executable, proxy.__file__, "--env-file", os.devnull], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_health(port)
        yield process, port
    finally:
        process.terminate()
        process.wait(timeout=30)


def proxy_cpu(process, conn, upstream, answer, framing, translated=False):
    """Milliseconds of the proxy's CPU for one streamed request, and the size of the answer."""
    upstream.reset()  # keeps only this answer's bytes
    upstream.plan(good(text=answer[0], deltas=answer[1], framing=framing))
    before = cpu_ns(process.pid)
    conn.request("POST", "/v1/responses", body=STREAMED, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    body = response.read()
    spent = (cpu_ns(process.pid) - before) / 1e6
    if translated:  # a chat stream in, a Responses stream out
        assert response.status == 200 and body.startswith(b"event: response.completed", body.rfind(b"\n\nevent: ") + 2)
    else:
        assert response.status == 200 and body == upstream.sent[-1], "the client did not get the upstream's bytes"
    return spent, len(body)


@pytest.mark.parametrize("framing", ["chunked", "length"])
def test_four_times_the_answer_costs_less_than_six_times_the_cpu(upstream, proxy_process, framing):
    process, port = proxy_process  # chunked: the fake upstream's 16 KB chunks, one proxy read each
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)  # one connection: its thread lives on
    try:
        proxy_cpu(process, conn, upstream, SMALL, framing)  # warm-up: the upstream connection, first buffers
        proxy_cpu(process, conn, upstream, LARGE, framing)
        small, large = [], []
        for _ in range(RUNS):  # interleaved, so a busy moment hits both sizes alike
            cost, small_size = proxy_cpu(process, conn, upstream, SMALL, framing)
            small.append(cost)
            cost, large_size = proxy_cpu(process, conn, upstream, LARGE, framing)
            large.append(cost)
    finally:
        conn.close()
    assert 3.5 < large_size / small_size < 4.5
    assert min(large) < 6 * min(small), "%s: %.1f ms of proxy CPU for %d bytes, %.1f ms for %d bytes (x%.1f)" % (
        framing, min(small), small_size, min(large), large_size, min(large) / min(small))


@pytest.mark.parametrize("proxy_process", ["chat"], indirect=True)
def test_translation_costs_less_than_six_times_the_cpu_for_four_times_the_answer(upstream, proxy_process):
    """A Responses client on a chat upstream: judging, then translating, stays linear."""
    process, port = proxy_process
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        proxy_cpu(process, conn, upstream, SMALL, "chunked", translated=True)
        proxy_cpu(process, conn, upstream, LARGE, "chunked", translated=True)
        small, large = [], []
        for _ in range(RUNS):
            cost, small_size = proxy_cpu(process, conn, upstream, SMALL, "chunked", translated=True)
            small.append(cost)
            cost, large_size = proxy_cpu(process, conn, upstream, LARGE, "chunked", translated=True)
            large.append(cost)
    finally:
        conn.close()
    assert all(seen.path.endswith("/chat/completions") for seen in upstream.requests)
    assert 3.5 < large_size / small_size < 4.5
    assert min(large) < 6 * min(small), "translated: %.1f ms of proxy CPU for %d bytes, %.1f ms for %d bytes (x%.1f)" % (
        min(small), small_size, min(large), large_size, min(large) / min(small))
