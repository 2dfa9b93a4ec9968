"""The decisions the handler sends, as data: request preparation, access, routes, answers and give-ups."""

import json

import pytest

from retry_shield.buffers import BufferPool
from retry_shield.config import load_config
from retry_shield.errors import UpstreamFailure
from retry_shield.prepare import prepare
from retry_shield.replies import EVENT_STREAM, answer_reply, give_up_reply, says_no_such_path
from retry_shield.routes import check_access, route_error
from retry_shield.sse import StreamInspector, StreamVerdict
from retry_shield.upstream import UpstreamAnswer

ENDPOINT = "http://127.0.0.1:9/v1"


def config(**settings):
    return load_config([], dict({"AZURE_ENDPOINT": ENDPOINT}, **settings))


def stream_answer(body, protocol="responses"):
    inspector = StreamInspector(protocol)
    inspector.feed(body)
    verdict = inspector.verdict()
    return UpstreamAnswer(200, [("Content-Type", "text/event-stream"), ("x-request-id", "req-1"),
                                ("Cache-Control", "private"), ("Content-Length", "1")],
                          inspector.body, verdict, inspector.loan)


def responses_stream(response, terminal="response.completed"):
    return (b"event: response.created\ndata: {\"type\":\"response.created\"}\n\n"
            + b"event: " + terminal.encode() + b"\ndata: "
            + json.dumps({"type": terminal, "response": response}).encode() + b"\n\n")


# -- preparation ---------------------------------------------------------------


def test_a_streamed_request_with_nothing_to_change_goes_as_it_came():
    raw = b'{"model": "m",  "stream": true, "input": "caf\\u00e9"}'
    outbound = prepare("/responses", "", json.loads(raw), raw, [("Authorization", "Bearer c")], config())
    assert outbound.body is raw
    assert outbound.url == ENDPOINT + "/responses" and outbound.wants_stream
    assert (outbound.client_protocol, outbound.upstream_protocol) == ("responses", "responses")
    assert outbound.headers["Authorization"] == "Bearer c"


def test_a_request_is_forced_to_stream_and_to_the_forced_model():
    raw = b'{"model": "asked", "messages": []}'
    outbound = prepare("/chat/completions", "api-version=1", json.loads(raw), raw, [],
                       config(FORCED_MODEL="forced", AZURE_API_KEY="sk-0123456789"))
    assert json.loads(outbound.body) == {"model": "forced", "messages": [], "stream": True,
                                         "stream_options": {"include_usage": True}}  # for the assembled usage
    assert (outbound.model_asked, outbound.model_sent, outbound.wants_stream) == ("asked", "forced", False)
    assert outbound.url == ENDPOINT + "/chat/completions?api-version=1" and outbound.client_protocol == "chat"
    assert outbound.headers["api-key"] == "sk-0123456789"


# -- access and routes ---------------------------------------------------------


def test_access_refusals_are_replies_with_their_reason():
    access = check_access({"Host": "evil.example:8888"}, config(), 8888)
    assert access.refusal.status == 403 and access.reason == "host_not_allowed" and access.refusal.close
    access = check_access({"Origin": "https://evil.example"}, config(), 8888)
    assert access.refusal.status == 403 and access.reason == "origin_not_allowed"
    keyed = config(PROXY_API_KEY="proxy-secret-1", ALLOWED_ORIGINS="http://localhost:3000")
    access = check_access({"Origin": "http://localhost:3000", "Authorization": "Bearer wrong"}, keyed, 8888)
    assert access.refusal.status == 401 and access.reason == "invalid_proxy_key"
    assert ("Access-Control-Allow-Origin", "http://localhost:3000") in access.cors
    assert b"proxy-secret-1" not in access.refusal.body
    assert check_access({"Authorization": "Bearer proxy-secret-1"}, keyed, 8888).refusal is None
    assert check_access({}, keyed, 8888, needs_key=False).refusal is None


@pytest.mark.parametrize("method, path, status, allow", [
    ("GET", "/v1/responses", 405, "POST"), ("POST", "/health", 405, "GET"), ("DELETE", "/v1/models", 405, "GET"),
    ("GET", "/nowhere", 404, None),
])
def test_route_errors(method, path, status, allow):
    reply = route_error(method, path)
    assert reply.status == status and reply.close
    assert dict(reply.headers).get("Allow") == allow
    assert json.loads(reply.body)["error"]["type"] == "invalid_request_error"


# -- answers -------------------------------------------------------------------


def test_a_stream_is_replayed_as_it_came_to_a_streaming_client():
    body = responses_stream({"id": "resp_1", "output": []})
    with stream_answer(body) as answer:
        reply = answer_reply(answer, wants_stream=True)
        assert reply.status == 200 and reply.content_type == EVENT_STREAM and bytes(reply.body) == body
        headers = dict(reply.headers)
        assert headers["Cache-Control"] == "no-cache" and headers["x-request-id"] == "req-1"
        assert "Content-Length" not in headers and "Content-Type" not in headers


def test_a_stream_becomes_its_response_object_for_a_non_streaming_client():
    response = {"id": "resp_1", "object": "response", "output": [], "usage": {"input_tokens": 1}}
    with stream_answer(responses_stream(response)) as answer:
        reply = answer_reply(answer, wants_stream=False)
    assert reply.status == 200 and reply.content_type == "application/json"
    assert json.loads(reply.body) == response


@pytest.mark.parametrize("code, status", [("context_length_exceeded", 400), ("insufficient_quota", 429)])
def test_a_final_stream_error_is_answered_as_the_api_answers_it(code, status):
    failed = responses_stream({"id": "r", "error": {"code": code, "message": "no"}}, "response.failed")
    with stream_answer(failed) as answer:
        assert answer.verdict.outcome == StreamVerdict.FAILED
        reply = answer_reply(answer, wants_stream=False)
    assert reply.status == status and json.loads(reply.body)["error"]["code"] == code


def test_an_answer_that_does_not_stream_passes_as_it_came():
    answer = UpstreamAnswer(400, [("Content-Type", "application/problem+json")], b'{"error":{}}', None)
    reply = answer_reply(answer, wants_stream=True)
    assert (reply.status, reply.content_type, reply.body) == (400, "application/problem+json", b'{"error":{}}')


def test_closing_the_answer_gives_its_buffer_back_with_its_views_released():
    pool = BufferPool()
    inspector = StreamInspector("responses", pool.lend(biggest=True))
    inspector.feed(responses_stream({"id": "r"}))
    answer = UpstreamAnswer(200, [], inspector.body, inspector.verdict(), inspector.loan)
    with answer:
        reply = answer_reply(answer, wants_stream=True)
    assert pool.pooled_bytes > 0
    with pytest.raises(ValueError, match="released"):  # no view outlives the loan
        bytes(reply.body)
    pool.take(biggest=True).extend(b"x" * 10)  # and nothing pins the buffer: it can grow again


# -- giving up -----------------------------------------------------------------


def test_giving_up_on_an_upstream_status_passes_its_last_answer():
    failure = UpstreamFailure("status", "HTTP 503", status=503, body=b'{"error":{"message":"busy"}}',
                              headers={"content-type": "application/json", "retry-after": "3", "date": "x"})
    reply = give_up_reply(failure, 9)
    assert (reply.status, reply.body) == (503, b'{"error":{"message":"busy"}}')
    assert dict(reply.headers) == {"retry-after": "3"}


@pytest.mark.parametrize("kind, status", [("timeout", 504), ("cut", 502), ("connect", 502)])
def test_giving_up_otherwise_is_the_proxys_own_error(kind, status):
    reply = give_up_reply(UpstreamFailure(kind, "it broke"), 3)
    error = json.loads(reply.body)["error"]
    assert reply.status == status and error["code"] == kind and error["attempts"] == 3
    assert error["message"] == "upstream failed after 3 attempts: it broke" and error["type"] == "proxy_error"


@pytest.mark.parametrize("body, wrong_path", [
    (b'{"error": {"message": "Invalid URL (POST /v1/responses)", "type": "invalid_request_error"}}', True),
    (b'{"detail": "Not Found"}', True),
    (b'{"error": "Unexpected endpoint or method. (POST /v1/responses)"}', True),
    (b"404 page not found", True),
    (b"", True),
    (b'{"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}}', True),
    (b'{"error": {"message": "The model `gpt-9` does not exist", "code": "model_not_found"}}', False),
    (b'{"error": {"code": "DeploymentNotFound", "message": "The API deployment for this resource does not exist."}}',
     False),
    (b'{"error": {"message": "nope 404", "code": "x404"}}', False),
])
def test_a_404_says_whether_the_path_is_unknown_or_a_model_is(body, wrong_path):
    assert says_no_such_path(body) is wrong_path


# -- stopping ------------------------------------------------------------------


def test_the_stop_is_answered_503_proxy_stopping_and_names_the_last_failure():
    from retry_shield.replies import stopping_reply
    unsent = stopping_reply(None, 0)
    assert (unsent.status, unsent.close) == (503, True)
    assert json.loads(unsent.body)["error"] == {"message": "the proxy is stopping; the request was not sent upstream",
                                                "type": "proxy_error", "code": "proxy_stopping"}
    cut_short = json.loads(stopping_reply(UpstreamFailure("stopping", "cut short: the proxy is stopping"), 1).body)
    assert cut_short["error"]["message"] == "the proxy is stopping; attempt 1 was cut short"
    busy = stopping_reply(UpstreamFailure("status", "HTTP 429", status=429, body=b'{"error":{}}'), 2)
    error = json.loads(busy.body)["error"]
    assert busy.status == 503 and error["code"] == "proxy_stopping" and error["attempts"] == 2
    assert error["last_failure"] == "HTTP 429" and "no retry after attempt 2 failed: HTTP 429" in error["message"]


def test_reply_for_a_stopped_exchange():
    from dataclasses import replace
    from retry_shield.replies import reply_for
    from retry_shield.shield import STOPPED, Exchange
    outbound = prepare("/responses", "", {"model": "m", "input": "x"}, b'{"model":"m","input":"x"}', [], config())
    exchange = replace(Exchange.of("POST", "/v1/responses", outbound, 0.0), outcome=STOPPED, status=503)
    reply = reply_for(exchange, "ids", 0)
    assert reply.status == 503 and json.loads(reply.body)["error"]["code"] == "proxy_stopping"
