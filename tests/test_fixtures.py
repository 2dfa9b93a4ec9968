"""The shared fixtures themselves: settings reach the real proxy, and post() round-trips through it."""

from tests.fake_upstream import good, status
from tests.helpers import post


def test_make_proxy_applies_and_removes_settings(upstream, make_proxy):
    running = make_proxy(upstream, MAX_RETRIES="3", TOTAL_TIMEOUT=None)
    assert running.config.max_retries == 3
    assert running.config.total_timeout == 600  # the default: the fast 20 s setting was removed
    assert running.config.retry_base_delay == 0.01
    assert running.port == running.server.server_address[1]
    assert running.url == "http://127.0.0.1:%d" % running.port


def test_shield_and_post_round_trip(upstream, shield):
    upstream.plan(status(500), good(text="through the shield"))
    code, headers, body = post(shield.port, "/v1/responses", {"model": "m", "input": "hi", "stream": True})
    assert code == 200 and headers["content-type"].startswith("text/event-stream")
    assert body == upstream.sent[-1] and upstream.attempts == 2
    assert upstream.requests[0].path == "/v1/responses" and upstream.requests[0].json["stream"] is True
