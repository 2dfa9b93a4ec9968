"""Self-checks of the scripted fake upstream, over real sockets with http.client."""

import gzip
import http.client
import json
import socket
import time

import pytest

from tests.fake_upstream import (FakeUpstream, chat_stream, cut, error_event, failed, good, incomplete, json_error,
                                 no_terminator, reset, responses_stream, stall, status)
from tests.test_engine import Clock

BODY = json.dumps({"model": "m", "input": "hi", "stream": True}).encode()
PATHS = {"responses": "/v1/responses", "chat": "/v1/chat/completions"}


def post(fake, path="/v1/responses", body=BODY, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
    try:
        conn.request("POST", path, body, dict({"Content-Type": "application/json"}, **(headers or {})))
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def events(body):
    """Parse SSE: every data line must be JSON or [DONE]; return (event names, parsed data)."""
    assert body.endswith(b"\n\n")
    names, datas = [], []
    for block in body.split(b"\n\n")[:-1]:
        for line in block.split(b"\n"):
            field, _, value = line.partition(b": ")
            assert field in (b"event", b"data"), line
            if field == b"event":
                names.append(value.decode())
            else:
                datas.append(value if value == b"[DONE]" else json.loads(value))
    return names, datas


def test_responses_stream_is_well_formed():
    names, datas = events(responses_stream("abcdefghij" * 10, deltas=25))
    assert names[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert names[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert [d["type"] for d in datas] == names
    assert [d["sequence_number"] for d in datas] == list(range(len(datas)))
    deltas = [d["delta"] for d in datas if d["type"] == "response.output_text.delta"]
    assert len(deltas) == 25 and "".join(deltas) == "abcdefghij" * 10
    final = datas[-1]["response"]
    assert final["id"] and final["status"] == "completed" and final["usage"]["total_tokens"] == 33
    assert final["output"][0]["content"][0]["text"] == "abcdefghij" * 10
    assert datas[-2]["item"]["type"] == "message"


def test_chat_stream_is_well_formed():
    names, datas = events(chat_stream("hello world", deltas=3))
    assert names == [] and datas[-1] == b"[DONE]"
    chunks = datas[:-1]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "hello world"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["usage"]["total_tokens"] == 33


def test_big_stream_builds_quickly():
    started = time.monotonic()
    body = responses_stream("x" * 500000, deltas=2000)
    assert len(body) > 500000 and time.monotonic() - started < 5


@pytest.mark.parametrize("outcome, protocols, terminal", [
    (no_terminator(), ("responses", "chat"), None),
    (error_event(code="server_error"), ("responses",), "response.completed"),
    (failed(code="server_error"), ("responses",), "response.failed"),
    (incomplete(), ("responses",), "response.incomplete"),
])
def test_every_stream_outcome_parses(outcome, protocols, terminal):
    with FakeUpstream() as fake:
        fake.plan(outcome)
        for protocol in protocols:
            code, headers, body = post(fake, PATHS[protocol])
            assert code == 200 and headers["content-type"].startswith("text/event-stream")
            names, datas = events(body)
            assert body == fake.sent[-1]
            if protocol == "responses":
                assert (names[-1] if terminal else None) == terminal
                assert "response.completed" not in names or terminal == "response.completed"
            else:
                assert b"[DONE]" not in datas
        if outcome.kind == "error_event":
            assert "error" in events(fake.sent[0])[0]


def test_chat_error_lines():
    with FakeUpstream() as fake:
        fake.plan(error_event(code="boom"), failed(code="context_length_exceeded"))
        _, datas = events(post(fake, PATHS["chat"])[2])
        assert any(isinstance(d, dict) and d.get("error", {}).get("code") == "boom" for d in datas)
        _, datas = events(post(fake, PATHS["chat"])[2])
        assert datas[-1]["error"]["code"] == "context_length_exceeded"


def test_plan_sequencing_records_and_last_outcome_repeats():
    with FakeUpstream() as fake:
        fake.plan(status(429, headers={"Retry-After": "1"}), json_error(code="overloaded"), good(text="done"))
        first = post(fake, "/openai/v1/responses?api-version=1", headers={"Api-Key": "k"})
        assert first[0] == 429 and first[1]["retry-after"] == "1" and "error" in json.loads(first[2])
        second = post(fake)
        assert second[0] == 200 and json.loads(second[2])["error"]["code"] == "overloaded"
        for _ in range(2):
            assert events(post(fake)[2])[1][-1]["response"]["output"][0]["content"][0]["text"] == "done"
        fake.wait_attempts(4, timeout=1)
        assert fake.attempts == 4 and len(fake.sent) == 4
        seen = fake.requests[0]
        assert (seen.method, seen.path, seen.query) == ("POST", "/openai/v1/responses", "api-version=1")
        assert seen.headers["api-key"] == "k" and seen.body == BODY and seen.json["model"] == "m"
        assert fake.requests[0].time <= fake.requests[3].time
        conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
        conn.request("GET", "/v1/models")
        assert json.loads(conn.getresponse().read())["data"][0]["id"]
        conn.close()
        assert fake.attempts == 4  # GETs are recorded but are not attempts
        fake.reset()
        assert (fake.attempts, fake.requests, fake.sent) == (0, [], [])
        with pytest.raises(AssertionError):
            fake.wait_attempts(1, timeout=0.05)


@pytest.mark.parametrize("framing", ["chunked", "length", "close"])
def test_good_framings_and_gzip(framing):
    with FakeUpstream() as fake:
        fake.plan(good(framing=framing), good(framing=framing, gzip=True, headers={"X-Extra": "1"}))
        plain = post(fake)
        assert plain[2] == responses_stream()
        zipped = post(fake)
        assert zipped[1]["content-encoding"] == "gzip" and zipped[1]["x-extra"] == "1"
        assert gzip.decompress(zipped[2]) == plain[2] == fake.sent[1]


@pytest.mark.parametrize("framing", ["chunked", "length"])
def test_cut_really_truncates(framing):
    with FakeUpstream() as fake:
        fake.plan(cut(300, framing=framing))
        conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
        conn.request("POST", "/v1/responses", BODY)
        response = conn.getresponse()
        assert response.status == 200
        with pytest.raises(http.client.IncompleteRead) as caught:
            response.read()
        conn.close()
        assert caught.value.partial == responses_stream()[:300] == fake.sent[0]


def test_reset_is_a_real_rst():
    with FakeUpstream() as fake:
        fake.plan(reset())
        sock = socket.create_connection(("127.0.0.1", fake.port), timeout=10)
        sock.sendall(b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        with pytest.raises(ConnectionResetError):
            sock.recv(100)
        sock.close()
        assert fake.attempts == 1 and fake.requests[0].body == b"{}"


def test_stall_sends_headers_then_ends_on_stop():
    fake = FakeUpstream().start()
    fake.plan(stall(60, after_bytes=50))
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
    conn.request("POST", "/v1/chat/completions", BODY)
    response = conn.getresponse()
    assert response.status == 200 and response.read1(1000) == chat_stream()[:50]
    started = time.monotonic()
    fake.stop()
    with pytest.raises(http.client.IncompleteRead):
        response.read()
    conn.close()
    assert time.monotonic() - started < 5


def test_echo_appends_a_field_of_each_request_to_the_text():
    with FakeUpstream() as fake:
        fake.plan(good(text="answer to ", echo="input"))
        for protocol, marker in (("responses", "client-1"), ("chat", "client-2")):
            body = json.dumps({"model": "m", "input": marker, "stream": True}).encode()
            code, _, received = post(fake, PATHS[protocol], body=body)
            expected = responses_stream("answer to " + marker) if protocol == "responses" \
                else chat_stream("answer to " + marker)
            assert code == 200 and received == expected == fake.sent[-1]
        assert post(fake, body=b"not json")[2] == responses_stream("answer to ")  # nothing to echo


def test_the_rate_limit_answers_429_beyond_its_count_until_the_window_closes():
    with FakeUpstream() as fake:
        fake.clock = clock = Clock()  # still while the posts are made: the whole window is left
        fake.limit(2, 30.0)  # as Azure: Retry-After and the hint in the message, no x-ratelimit headers
        first, second, third = (post(fake) for _ in range(3))
        assert (first[0], second[0], third[0]) == (200, 200, 429) and fake.limited == 1 and fake.attempts == 3
        assert third[1]["retry-after"] == "30" and "x-ratelimit-remaining-requests" not in first[1]
        assert "Please retry after 30 seconds." in json.loads(third[2])["error"]["message"]
        clock.now += 29.5
        code, headers, body = post(fake)  # 0.5 s left: rounded up to a whole second
        assert (code, headers["retry-after"]) == (429, "1")
        assert "Please retry after 1 second." in json.loads(body)["error"]["message"]
        fake.limit(2, 30.0, retry_after=False, reset_headers=True)  # as OpenAI: the count on every answer
        answers = [post(fake) for _ in range(3)]
        assert [answer[0] for answer in answers] == [200, 200, 429] and "retry-after" not in answers[2][1]
        assert [answer[1]["x-ratelimit-remaining-requests"] for answer in answers] == ["1", "0", "0"]
        assert all(answer[1]["x-ratelimit-limit-requests"] == "2" for answer in answers)
        assert answers[2][1]["x-ratelimit-reset-requests"] == "30000ms"
        assert "retry after" not in json.loads(answers[2][2])["error"]["message"]


def test_the_rate_limit_opens_a_new_window_with_the_first_attempt_after_the_last_closed():
    with FakeUpstream() as fake:
        fake.clock = clock = Clock()  # at 100.0
        fake.limit(1, 0.2)
        assert post(fake)[0] == 200 and post(fake)[0] == 429  # the window of 100.0 to 100.2
        clock.now = 100.3
        assert post(fake)[0] == 200  # a new window, 100.3 to 100.5
        clock.now = 100.45  # windows back to back from the first would have opened one at 100.4
        assert post(fake)[0] == 429
        clock.now = 100.6
        assert post(fake)[0] == 200 and fake.limited == 2
