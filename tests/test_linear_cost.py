"""The proxy's cost grows linearly with the answer: a quadratic regression fails here.

Measured on the hot path itself, proxy.attempt() (read, inspect, buffer), in this thread
with time.thread_time(), so the fake upstream's own work in its threads does not count.
"""

import json
import time

import proxy
from tests.fake_upstream import good

WORDS = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "


def cpu_of_one_attempt(upstream, text, deltas, framing):
    upstream.plan(good(text=text, deltas=deltas, framing=framing))
    config = proxy.load_config([], {"AZURE_ENDPOINT": upstream.url + "/v1"})
    url = proxy.upstream_url(config.endpoint, "/responses")
    body = json.dumps({"model": "m", "input": "x", "stream": True}).encode()
    best = float("inf")
    for _ in range(3):
        started = time.thread_time()
        answer = proxy.attempt(config, url, body, {}, "responses", time.monotonic() + 60, lambda: True)
        best = min(best, time.thread_time() - started)
        assert answer.verdict.outcome == proxy.StreamVerdict.COMPLETE
    return best, len(answer.body)


def test_four_times_the_answer_costs_less_than_six_times_the_cpu(upstream):
    for framing in ("chunked", "length"):
        small, small_size = cpu_of_one_attempt(upstream, WORDS * 4000, 8000, framing)
        large, large_size = cpu_of_one_attempt(upstream, WORDS * 16000, 32000, framing)
        assert 3.5 < large_size / small_size < 4.5
        assert large < 6 * small + 0.005, "%s: %.1f ms for %d bytes, %.1f ms for %d bytes" % (
            framing, small * 1000, small_size, large * 1000, large_size)
