"""The shield end to end: real proxy, scripted upstream, real sockets.

For every failure kind that is retried, the client receives exactly the good attempt's
bytes and the upstream saw exactly the planned attempts; for every kind that is final,
one attempt, passed to the client as the upstream sent it.
"""

import json
import threading
import time

import pytest

from tests.fake_upstream import (body_for, cut, error_event, failed, good, incomplete, json_error, no_terminator, reset,
                                 stall, status)
from tests.helpers import post_and_leave, request

PROTOCOLS = {"responses": "/v1/responses", "chat": "/v1/chat/completions"}


def streamed(port, path, body=None, headers=None):
    payload = dict(body or {"model": "gpt-test", "input": "hi", "messages": [{"role": "user", "content": "hi"}]})
    payload["stream"] = True
    return request(port, path=path, body=json.dumps(payload).encode(), headers=headers)


RETRIED = {
    "connection reset": reset(),
    "429": status(429),
    "408": status(408),
    "409": status(409),
    "500": status(500),
    "502": status(502),
    "503": status(503),
    "504": status(504),
    "stall before headers": stall(3.0),
    "stall mid-stream": stall(3.0, after_bytes=200),
    "cut chunked": cut(300, framing="chunked"),
    "cut short content-length": cut(300, framing="length"),
    "no terminator": no_terminator(),
    "error event in 200": error_event(code="server_error", message="The server had an error"),
    "retryable response.failed": failed(code="server_error"),
    "JSON error in 200": json_error(status=200, code="server_error", message="overloaded"),
}


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
@pytest.mark.parametrize("kind", sorted(RETRIED))
def test_retried_then_exact_good_bytes(upstream, make_proxy, protocol, kind):
    upstream.plan(RETRIED[kind], RETRIED[kind], good(text="the whole answer"))
    shield = make_proxy(upstream, UPSTREAM_TIMEOUT="0.5")
    status_code, headers, body = streamed(shield.port, PROTOCOLS[protocol])
    assert status_code == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert body == upstream.sent[-1], "the client must get the good attempt byte for byte"
    assert body == body_for(good(text="the whole answer"), protocol)
    assert upstream.attempts == 3


FINAL_STATUSES = [400, 401, 403, 404, 413, 422]


@pytest.mark.parametrize("code", FINAL_STATUSES)
def test_final_statuses_pass_through_at_once(upstream, make_proxy, code):
    body = {"error": {"message": "nope %d" % code, "type": "invalid_request_error", "code": "x%d" % code}}
    upstream.plan(status(code, body=body, headers={"x-request-id": "req-1"}))
    shield = make_proxy(upstream)
    status_code, headers, received = streamed(shield.port, PROTOCOLS["responses"])
    assert status_code == code
    assert json.loads(received) == body
    assert headers["x-request-id"] == "req-1"
    assert upstream.attempts == 1


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
@pytest.mark.parametrize("code", ["context_length_exceeded", "insufficient_quota", "invalid_prompt"])
def test_final_stream_errors_pass_through_at_once(upstream, make_proxy, protocol, code):
    upstream.plan(failed(code=code, message="final " + code))
    shield = make_proxy(upstream)
    status_code, _, body = streamed(shield.port, PROTOCOLS[protocol])
    assert status_code == 200 and body == upstream.sent[-1]
    assert code.encode() in body
    assert upstream.attempts == 1


def test_response_incomplete_is_a_legitimate_end(upstream, make_proxy):
    upstream.plan(incomplete(reason="max_output_tokens"))
    shield = make_proxy(upstream)
    status_code, _, body = streamed(shield.port, PROTOCOLS["responses"])
    assert status_code == 200 and body == upstream.sent[-1] and b"response.incomplete" in body
    assert upstream.attempts == 1


def test_final_error_event_code_is_not_retried(upstream, make_proxy):
    upstream.plan(error_event(code="context_length_exceeded", message="too long"))
    shield = make_proxy(upstream)
    status_code, _, body = streamed(shield.port, PROTOCOLS["responses"])
    assert status_code == 200 and body == upstream.sent[-1]
    assert upstream.attempts == 1


def attempt_gaps(upstream):
    times = [seen.time for seen in upstream.requests if seen.method == "POST"]
    return [later - earlier for earlier, later in zip(times, times[1:])]


@pytest.mark.parametrize("headers, message, expected", [
    ({"retry-after-ms": "600"}, "", 0.6),
    ({"Retry-After": "1"}, "", 1.0),
    ({"x-ratelimit-reset-requests": "700ms"}, "", 0.7),
    ({"x-ratelimit-reset-tokens": "0m0.8s"}, "", 0.8),
    ({}, "Rate limit reached. Please try again in 0.9s.", 0.9),
])
def test_retry_hints_are_honoured(upstream, make_proxy, headers, message, expected):
    body = {"error": {"message": message or "slow down", "code": "rate_limit_exceeded"}}
    upstream.plan(status(429, body=body, headers=headers), good())
    shield = make_proxy(upstream, RETRY_BASE_DELAY="0.01", RETRY_MAX_DELAY="0.02")
    assert streamed(shield.port, PROTOCOLS["responses"])[0] == 200
    (gap,) = attempt_gaps(upstream)
    assert expected <= gap < expected + 1.0


def test_retry_after_http_date_is_honoured(upstream, make_proxy):
    from email.utils import formatdate
    # HTTP dates have one-second resolution: ask for 2 s from now, expect more than 1 s.
    upstream.plan(status(429, headers={"Retry-After": formatdate(time.time() + 2, usegmt=True)}), good())
    shield = make_proxy(upstream, RETRY_BASE_DELAY="0.01", RETRY_MAX_DELAY="0.02")
    assert streamed(shield.port, PROTOCOLS["responses"])[0] == 200
    (gap,) = attempt_gaps(upstream)
    assert 1.0 <= gap < 3.5


def test_backoff_is_progressive(upstream, make_proxy):
    upstream.plan(status(500), status(500), status(500), good())
    shield = make_proxy(upstream, RETRY_BASE_DELAY="0.2", RETRY_MAX_DELAY="10")
    assert streamed(shield.port, PROTOCOLS["chat"])[0] == 200
    gaps = attempt_gaps(upstream)
    # Waits of 0.2, 0.4, 0.8 s, each jittered down by at most 25%.
    for gap, ceiling in zip(gaps, (0.2, 0.4, 0.8)):
        assert ceiling * 0.75 <= gap < ceiling + 0.5
    assert gaps[2] > gaps[0]


def test_give_up_with_last_upstream_status(upstream, make_proxy):
    body = {"error": {"message": "busy", "code": "rate_limit_exceeded"}}
    upstream.plan(status(429, body=body, headers={"Retry-After": "0"}))
    shield = make_proxy(upstream, MAX_RETRIES="2")
    status_code, headers, received = streamed(shield.port, PROTOCOLS["responses"])
    assert status_code == 429 and json.loads(received) == body and headers["retry-after"] == "0"
    assert upstream.attempts == 3


@pytest.mark.parametrize("outcome, expected_status, kind", [
    (reset(), 502, "reset"),
    (cut(100), 502, "cut"),
    (stall(5.0), 504, "timeout"),
    (error_event(code="server_error"), 502, "stream_error"),
])
def test_give_up_format(upstream, make_proxy, outcome, expected_status, kind):
    upstream.plan(outcome)
    shield = make_proxy(upstream, MAX_RETRIES="1", UPSTREAM_TIMEOUT="0.3")
    status_code, headers, received = streamed(shield.port, PROTOCOLS["responses"])
    assert status_code == expected_status
    assert headers["content-type"] == "application/json"
    error = json.loads(received)["error"]
    assert error["type"] == "proxy_error" and error["attempts"] == 2 and error["code"] == kind
    assert error["last_failure"] and error["message"]
    assert upstream.attempts == 2


def test_connection_refused_gives_502(make_proxy):
    class Nowhere:  # a port nobody listens on
        import socket
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            url = "http://127.0.0.1:%d" % sock.getsockname()[1]
    shield = make_proxy(Nowhere, MAX_RETRIES="2")
    status_code, _, received = streamed(shield.port, PROTOCOLS["chat"])
    error = json.loads(received)["error"]
    assert status_code == 502 and error["code"] == "connect" and error["attempts"] == 3


def test_give_up_within_total_timeout(upstream, make_proxy):
    upstream.plan(status(503))
    shield = make_proxy(upstream, MAX_RETRIES="100", RETRY_BASE_DELAY="0.3", RETRY_MAX_DELAY="0.3",
                        TOTAL_TIMEOUT="2")
    started = time.monotonic()
    status_code, _, _ = streamed(shield.port, PROTOCOLS["responses"])
    elapsed = time.monotonic() - started
    assert status_code == 503
    assert elapsed < 2.0
    assert 3 <= upstream.attempts < 10


def test_total_timeout_bounds_a_slow_attempt(upstream, make_proxy):
    upstream.plan(stall(10.0, after_bytes=100))
    shield = make_proxy(upstream, UPSTREAM_TIMEOUT="30", TOTAL_TIMEOUT="1")
    started = time.monotonic()
    status_code, _, received = streamed(shield.port, PROTOCOLS["responses"])
    assert status_code == 504 and json.loads(received)["error"]["type"] == "proxy_error"
    assert time.monotonic() - started < 3.0


def test_stream_is_forced_and_model_overridden(upstream, make_proxy):
    shield = make_proxy(upstream, FORCED_MODEL="gpt-forced")
    body = {"model": "gpt-mine", "input": "hi", "temperature": 0.3, "metadata": {"k": "v"}}
    request(shield.port, body=json.dumps(body).encode())
    assert upstream.requests[-1].json == dict(body, model="gpt-forced", stream=True)


def test_body_unchanged_without_forced_model(upstream, make_proxy):
    shield = make_proxy(upstream)
    body = {"model": "gpt-mine", "messages": [{"role": "user", "content": "héllo"}], "stream": False}
    request(shield.port, path="/chat/completions", body=json.dumps(body).encode())
    # the usage is asked for, so that the assembled chat.completion has it, as the API's would
    assert upstream.requests[-1].json == dict(body, stream=True, stream_options={"include_usage": True})
    assert upstream.requests[-1].path == "/v1/chat/completions"


def test_a_streaming_request_goes_upstream_byte_for_byte(upstream, make_proxy):
    """Codex's case: nothing to change, so nothing is re-encoded (escapes, spacing and key order stay)."""
    shield = make_proxy(upstream)
    raw = b'{ "stream" : true, "input": "caf\\u00e9 \xe2\x9c\x93", "model":"gpt-mine", "n": 1.50 }'
    status_code, _, _ = request(shield.port, path="/v1/responses", body=raw)
    assert status_code == 200 and upstream.requests[-1].body == raw


@pytest.mark.parametrize("body, settings", [
    ({"stream": False, "model": "gpt-mine"}, {}),
    ({"model": "gpt-mine"}, {}),
    ({"stream": True, "model": "gpt-mine"}, {"FORCED_MODEL": "gpt-forced"}),
    ({"stream": True}, {"FORCED_MODEL": "gpt-forced"}),
], ids=["stream false", "stream missing", "other model", "no model"])
def test_a_request_that_needs_a_change_is_rewritten(upstream, make_proxy, body, settings):
    shield = make_proxy(upstream, **settings)
    request(shield.port, path="/v1/responses", body=json.dumps(dict(body, input="x")).encode())
    sent = upstream.requests[-1].json
    assert sent["stream"] is True and sent.get("model") == settings.get("FORCED_MODEL", body.get("model"))


@pytest.mark.parametrize("raw, settings", [
    (b'{"model":"gpt-pricey","input":"x","stream":true,"model":"gpt-forced"}', {"FORCED_MODEL": "gpt-forced"}),
    (b'{"model":"m","stream":false,"input":"x","stream":true}', {}),
    (b'{"model":"m","str\\u0065am":false,"input":"x","stream":true}', {}),
], ids=["duplicate model", "duplicate stream", "escaped duplicate"])
def test_duplicate_keys_are_settled_before_going_upstream(upstream, make_proxy, raw, settings):
    """An upstream that keeps the first of two keys must not read another model or stream flag."""
    shield = make_proxy(upstream, **settings)
    request(shield.port, path="/v1/responses", body=raw)
    pairs = json.loads(upstream.requests[-1].body, object_pairs_hook=list)
    keys = [key for key, _ in pairs]
    assert keys.count("stream") == keys.count("model") == 1 and dict(pairs)["stream"] is True
    assert dict(pairs)["model"] == settings.get("FORCED_MODEL", "m")


def test_a_lone_surrogate_escape_is_forwarded_as_an_escape(upstream, make_proxy):
    shield = make_proxy(upstream)
    status_code, _, _ = request(shield.port, path="/v1/responses", body=b'{"model":"m","input":"\\ud83d"}')
    assert status_code == 200
    assert b'"\\ud83d"' in upstream.requests[-1].body and upstream.requests[-1].json["stream"] is True


def test_credentials_replaced_when_key_set(upstream, make_proxy):
    shield = make_proxy(upstream, AZURE_API_KEY="sk-real")
    streamed(shield.port, PROTOCOLS["responses"], headers={"Authorization": "Bearer dummy", "api-key": "dummy",
                                                           "OpenAI-Beta": "responses=v1"})
    seen = upstream.requests[-1].headers
    assert seen["authorization"] == "Bearer sk-real" and seen["api-key"] == "sk-real"
    assert seen["openai-beta"] == "responses=v1"
    assert seen["accept-encoding"] == "identity"


def test_credentials_pass_through_without_key(upstream, make_proxy):
    shield = make_proxy(upstream, AZURE_API_KEY=None)
    streamed(shield.port, PROTOCOLS["responses"], headers={"Authorization": "Bearer client-key"})
    seen = upstream.requests[-1].headers
    assert seen["authorization"] == "Bearer client-key" and "api-key" not in seen


def test_full_operation_endpoint_receives_every_post(upstream, make_proxy):
    endpoint = upstream.url + "/openai/deployments/gpt/chat/completions?api-version=2024-10-21"
    shield = make_proxy(upstream, AZURE_ENDPOINT=endpoint)
    streamed(shield.port, PROTOCOLS["chat"])
    seen = upstream.requests[-1]
    assert seen.path == "/openai/deployments/gpt/chat/completions" and seen.query == "api-version=2024-10-21"


def test_gzip_answer_is_decoded(upstream, make_proxy):
    upstream.plan(good(text="zipped answer", gzip=True))
    shield = make_proxy(upstream)
    status_code, headers, body = streamed(shield.port, PROTOCOLS["responses"])
    assert status_code == 200 and b"zipped" in body and b"response.completed" in body
    assert "content-encoding" not in headers


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("framing", ["chunked", "events", "length", "close"])
def test_every_framing_is_relayed_exactly(upstream, make_proxy, framing, gzip):
    """Big answers (several reads) then a small one, whose buffer is a reused, longer one."""
    answers = [good(text="big answer " * 30000, deltas=3000, framing=framing, gzip=gzip),
               good(text="another big one " * 20000, deltas=2000, framing=framing, gzip=gzip),
               good(text="small", framing=framing, gzip=gzip)]
    upstream.plan(*answers)
    shield = make_proxy(upstream)
    for protocol, answer in zip(["responses", "chat", "responses"], answers):
        status_code, _, body = streamed(shield.port, PROTOCOLS[protocol])
        assert status_code == 200
        assert body == upstream.sent[-1] == body_for(answer, protocol)
    assert upstream.attempts == 3


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_stray_bytes_after_the_body_are_ignored(upstream, make_proxy, framing):
    """A sloppy server sends a CRLF past its Content-Length (or last chunk): the answer is
    still whole and on time, and that connection is not reused."""
    answer = good(text="answer", framing=framing, trailing=b"\r\n")
    upstream.plan(answer, good(text="next"))
    shield = make_proxy(upstream, UPSTREAM_TIMEOUT="30")
    started = time.monotonic()
    status_code, _, body = streamed(shield.port, PROTOCOLS["responses"])
    assert (status_code, body) == (200, body_for(answer, "responses"))
    assert time.monotonic() - started < 10 and upstream.attempts == 1
    status_code, _, body = streamed(shield.port, PROTOCOLS["responses"])
    assert (status_code, body) == (200, body_for(good(text="next"), "responses"))
    assert upstream.attempts == 2


@pytest.mark.parametrize("code", [204, 401, 500])
def test_an_empty_answer_is_judged_at_once(upstream, make_proxy, code):
    """Content-Length: 0 (or a 204): nothing to wait for, so no wait for the upstream timeout."""
    upstream.plan(status(code, body=b""), good())
    shield = make_proxy(upstream, UPSTREAM_TIMEOUT="30")
    started = time.monotonic()
    status_code, _, body = streamed(shield.port, PROTOCOLS["responses"])
    assert time.monotonic() - started < 10
    if code == 500:
        assert status_code == 200 and upstream.attempts == 2
    else:
        assert (status_code, body, upstream.attempts) == (code, b"", 1)


@pytest.mark.parametrize("framing", ["chunked", "length", "close"])
def test_answer_over_max_response_bytes_is_abandoned(upstream, make_proxy, framing):
    answer = good(text="x " * 6000, framing=framing)
    upstream.plan(answer)
    # One byte over: the read that completes the body is the one that crosses the limit.
    shield = make_proxy(upstream, MAX_RESPONSE_BYTES=str(len(body_for(answer, "responses")) - 1))
    status_code, _, received = streamed(shield.port, PROTOCOLS["responses"])
    error = json.loads(received)["error"]
    assert status_code == 502 and "MAX_RESPONSE_BYTES" in error["message"]
    assert upstream.attempts == 1


def test_models_forwarded_once(upstream, make_proxy):
    shield = make_proxy(upstream)
    status_code, _, body = request(shield.port, "GET", "/v1/models", body=None)
    assert status_code == 200 and json.loads(body)["data"]
    assert [seen.path for seen in upstream.requests] == ["/v1/models"]


def test_keep_alive_serves_several_requests_on_one_connection(upstream, make_proxy):
    """http.client reconnects silently, so the socket itself is compared: one socket, one local port."""
    import http.client
    shield = make_proxy(upstream)
    conn = http.client.HTTPConnection("127.0.0.1", shield.port, timeout=30)
    conn.connect()
    sock, local = conn.sock, conn.sock.getsockname()
    try:
        for number in range(3):
            conn.request("POST", "/v1/responses", body=json.dumps({"model": "m", "input": "x", "stream": True}))
            response = conn.getresponse()
            assert response.status == 200 and response.read() == upstream.sent[-1]
            assert not response.will_close, "answer %d closes the connection" % (number + 1)
            assert conn.sock is sock and sock.getsockname() == local, "request %d used a new connection" % (
                number + 1)
    finally:
        conn.close()


def test_client_gone_stops_retrying(upstream, make_proxy):
    upstream.plan(status(503))
    shield = make_proxy(upstream, RETRY_BASE_DELAY="0.5", RETRY_MAX_DELAY="0.5", MAX_RETRIES="50")
    post_and_leave(shield.port, upstream)
    deadline = time.monotonic() + 10  # a proxy that kept retrying would stay busy for 25 s
    while json.loads(request(shield.port, "GET", "/health", body=None)[2])["in_flight"]:
        assert time.monotonic() < deadline, "the proxy kept retrying for a client that left"
        time.sleep(0.05)
    assert upstream.attempts <= 2


def test_health_counts_requests_and_retries(upstream, make_proxy):
    upstream.plan(status(500), good())
    shield = make_proxy(upstream)
    streamed(shield.port, PROTOCOLS["responses"])
    health = json.loads(request(shield.port, "GET", "/health", body=None)[2])
    assert health["requests"] == 1 and health["retries"] == 1 and health["service"] == "retry-shield"


def test_concurrent_requests_are_shielded_independently(upstream, make_proxy):
    """Eight clients at once, two of them retried: each gets its own answer, byte for byte.

    The upstream echoes each request's ``input`` into its answer, and the answers differ in
    size (one read to several), so answers crossed between clients or buffers shared between
    them show.
    """
    answer = good(text="answer to ", echo="input", delay=0.2)  # 0.2 s: the attempts overlap upstream
    upstream.plan(status(429), answer, status(500), answer)
    shield = make_proxy(upstream)
    markers = ["client %d: " % number + "%d " % number * (1 + 40000 * number) for number in range(8)]
    results = [None] * len(markers)
    start = threading.Barrier(len(markers))

    def client(number):
        start.wait(10)
        body = {"model": "gpt-test", "input": markers[number], "messages": [{"role": "user", "content": "hi"}]}
        results[number] = streamed(shield.port, PROTOCOLS["chat"], body=body)

    threads = [threading.Thread(target=client, args=(number,)) for number in range(len(markers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive()
    for number, marker in enumerate(markers):
        status_code, _, body = results[number]
        assert status_code == 200
        expected = body_for(good(text="answer to " + marker), "chat")
        assert body == expected, "client %d did not get exactly its own answer (%d bytes, its own is %d)" % (
            number, len(body), len(expected))
    assert upstream.attempts == len(markers) + 2  # the 429 and the 500 were each retried once


def test_connect_timeout_is_retried_then_504(make_proxy):
    import socket
    # A listener that never accepts, its tiny queue already full: new connections hang in SYN-SENT.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(listener.getsockname())
        fillers.append(filler)

    class Blackhole:
        url = "http://127.0.0.1:%d" % listener.getsockname()[1]

    try:
        shield = make_proxy(Blackhole, CONNECT_TIMEOUT="0.3", MAX_RETRIES="1")
        started = time.monotonic()
        status_code, _, received = streamed(shield.port, PROTOCOLS["responses"])
        error = json.loads(received)["error"]
        assert status_code == 504 and error["code"] == "timeout" and error["attempts"] == 2
        assert "connect timed out" in error["last_failure"]
        assert time.monotonic() - started < 5
    finally:
        for sock in fillers + [listener]:
            sock.close()


def test_log_lines(upstream, make_proxy, caplog):
    caplog.set_level("INFO", logger="retry_shield")
    upstream.plan(cut(41 * 1024 + 10, text="x" * 60000), good(text="x" * 60000))
    shield = make_proxy(upstream, RETRY_BASE_DELAY="0.01", RETRY_MAX_DELAY="0.01")
    streamed(shield.port, PROTOCOLS["responses"], body={"model": "gpt-log", "input": "hi"})
    messages = [record.getMessage() for record in caplog.records]
    assert any(line.startswith("attempt 1/9 failed: stream cut after 41 KB") and "; retrying in 0.0 s" in line
               for line in messages), messages
    summary = [line for line in messages if line.startswith("POST /v1/responses 200 ")]
    assert len(summary) == 1
    for part in ("attempts=2", "bytes=%d" % len(upstream.sent[-1]), "model=gpt-log", "tokens=11/22", "time="):
        assert part in summary[0]


def test_upstream_connections_are_kept_alive_and_reused(upstream, make_proxy):
    shield = make_proxy(upstream)
    for _ in range(3):
        assert streamed(shield.port, PROTOCOLS["responses"])[0] == 200
    peers = {seen.peer for seen in upstream.requests}
    assert len(upstream.requests) == 3 and len(peers) == 1


def test_a_kept_connection_the_upstream_closed_is_not_a_failed_attempt(make_proxy):
    from tests.fake_upstream import FakeUpstream
    first = FakeUpstream().start()
    shield = make_proxy(first, MAX_RETRIES="0")  # any failed attempt would reach the client
    assert streamed(shield.port, PROTOCOLS["responses"])[0] == 200  # its connection is kept
    port = first.port
    first.stop()  # closes every connection, the kept one included
    second = FakeUpstream(port=port).start()
    try:
        status_code, _, body = streamed(shield.port, PROTOCOLS["responses"])
        assert status_code == 200 and body == second.sent[-1] and second.attempts == 1
    finally:
        second.stop()


@pytest.mark.parametrize("stream", [True, False])
def test_a_stream_cut_inside_its_terminal_event_is_retried(upstream, make_proxy, stream):
    from tests.fake_upstream import responses_stream
    whole = responses_stream()
    upstream.plan(cut(len(whole) - 40, framing="close"), good())
    shield = make_proxy(upstream)
    body = json.dumps({"model": "m", "input": "hi", "stream": stream}).encode()
    status_code, _, received = request(shield.port, body=body)
    assert status_code == 200 and upstream.attempts == 2
    if stream:
        assert received == upstream.sent[-1]
    else:
        assert json.loads(received)["status"] == "completed"


def recorded_exchanges(shield):
    """Every Exchange the proxy records, as it records it (the summary line is logged from the same record)."""
    exchanges = []
    record = shield.server.record

    def keep(exchange):
        exchanges.append(exchange)
        record(exchange)
    shield.server.record = keep
    return exchanges


@pytest.mark.parametrize("resets", [1, 2])
def test_a_reset_on_a_kept_alive_connection_after_sending_is_a_counted_attempt(upstream, make_proxy, caplog, resets):
    """The upstream read the request, then reset: it may have billed it, so it is an attempt, logged and counted.

    The first request leaves its connection kept alive; the second goes out on it and is reset,
    then retried (at once, on a new connection); with two resets, the second one waits the backoff.
    """
    caplog.set_level("INFO", logger="retry_shield")
    upstream.plan(good(text="first"), *([reset()] * resets + [good(text="second")]))
    shield = make_proxy(upstream)
    exchanges = recorded_exchanges(shield)
    assert streamed(shield.port, PROTOCOLS["responses"])[0] == 200
    kept = upstream.requests[-1].peer
    status_code, _, body = streamed(shield.port, PROTOCOLS["responses"])
    assert status_code == 200 and body == body_for(good(text="second"), "responses")
    posts = upstream.attempts - 1  # the second request's POSTs, as the upstream counted them
    assert posts == resets + 1
    assert len(exchanges[-1].attempts) == posts
    assert [attempt.kind for attempt in exchanges[-1].attempts] == ["reset"] * resets + ["ok"]
    summaries = [record.getMessage() for record in caplog.records if record.getMessage().startswith("POST ")]
    assert "attempts=%d " % posts in summaries[-1]
    failed = [record.getMessage() for record in caplog.records if "failed: connection lost" in record.getMessage()]
    assert len(failed) == resets and "kept-alive" in failed[0] and "retrying in 0.0 s" in failed[0]
    peers = [seen.peer for seen in upstream.requests[1:]]
    assert peers[0] == kept and kept not in peers[1:], "the attempt after the reset must use a new connection"


def test_a_kept_connection_found_dead_while_sending_is_not_an_attempt(upstream, make_proxy):
    """A pooled connection whose send fails never delivered the request whole: it is dropped, and the
    request goes out on a new connection as attempt 1 (any failed attempt would reach the client here)."""
    import http.client
    import socket
    shield = make_proxy(upstream, MAX_RETRIES="0")
    dead, peer = socket.socketpair()  # open at the other end, so the pool's check passes; our sending side is shut
    dead.shutdown(socket.SHUT_WR)
    conn = http.client.HTTPConnection("127.0.0.1", upstream.port)
    conn.sock = dead
    shield.server.upstream.pool.give("127.0.0.1:%d" % upstream.port, conn)
    exchanges = recorded_exchanges(shield)
    try:
        status_code, _, body = streamed(shield.port, PROTOCOLS["responses"])
        assert status_code == 200 and body == upstream.sent[-1]
        assert upstream.attempts == 1 and len(exchanges[-1].attempts) == 1
        assert shield.server.upstream.pool.take("127.0.0.1:%d" % upstream.port) is not conn
        assert peer.recv(1) == b""  # the dead connection was closed, not kept
    finally:
        peer.close()


def test_a_request_waiting_to_retry_gets_proxy_stopping_at_once_when_the_proxy_stops(upstream, make_proxy, caplog):
    caplog.set_level("WARNING", logger="retry_shield")
    upstream.plan(status(503), good())
    shield = make_proxy(upstream, RETRY_BASE_DELAY="30", RETRY_MAX_DELAY="30", TOTAL_TIMEOUT="120")
    result = {}
    client = threading.Thread(target=lambda: result.update(answer=streamed(shield.port, PROTOCOLS["responses"])))
    client.start()
    deadline = time.monotonic() + 10
    while not any("; retrying in" in record.getMessage() for record in caplog.records):  # the 30 s wait began
        assert time.monotonic() < deadline, "attempt 1 was not followed by a wait"
        time.sleep(0.01)
    started = time.monotonic()
    shield.server.drain(grace=5.0)
    client.join(timeout=10)
    assert time.monotonic() - started < 2.0
    status_code, headers, body = result["answer"]
    error = json.loads(body)["error"]
    assert status_code == 503 and error["code"] == "proxy_stopping" and error["attempts"] == 1
    assert "HTTP 503" in error["last_failure"] and headers["connection"] == "close"
    assert upstream.attempts == 1


def test_a_request_that_arrives_while_stopping_is_not_sent_upstream(upstream, make_proxy):
    """A kept-alive client connection can still bring a request after the listener is closed."""
    shield = make_proxy(upstream)
    shield.server.stopping.set()
    status_code, headers, body = streamed(shield.port, PROTOCOLS["chat"])
    error = json.loads(body)["error"]
    assert status_code == 503 and error["code"] == "proxy_stopping" and "not sent upstream" in error["message"]
    assert upstream.requests == [] and headers["connection"] == "close"
