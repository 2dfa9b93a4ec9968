"""Real clients through the proxy: non-streaming JSON for both protocols, and the official openai SDK."""

import json

import openai
import pytest

from tests.fake_upstream import cut, error_event, failed, good, status
from tests.helpers import request

TEXT = "A complete answer, with words that must all arrive."


def test_non_streaming_responses_client_gets_the_response_object(upstream, make_proxy):
    upstream.plan(status(503), good(text=TEXT))
    shield = make_proxy(upstream)
    code, headers, body = request(shield.port, body=json.dumps({"model": "m", "input": "hi"}).encode())
    assert code == 200 and headers["content-type"] == "application/json"
    response = json.loads(body)
    assert response["object"] == "response" and response["status"] == "completed"
    assert response["output"][0]["content"][0]["text"] == TEXT
    assert response["usage"]["output_tokens"] == 22
    assert upstream.requests[-1].json["stream"] is True


def test_non_streaming_chat_client_gets_an_assembled_completion(upstream, make_proxy):
    upstream.plan(cut(200), good(text=TEXT, deltas=13))
    shield = make_proxy(upstream)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": False}).encode()
    code, _, received = request(shield.port, path="/v1/chat/completions", body=body)
    completion = json.loads(received)
    assert code == 200 and completion["object"] == "chat.completion"
    choice = completion["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": TEXT, "refusal": None}
    assert choice["finish_reason"] == "stop"
    assert completion["usage"]["total_tokens"] == 33 and completion["id"] == "chatcmpl-fake"


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/chat/completions"])
def test_non_streaming_final_error_is_an_error_status(upstream, make_proxy, path):
    upstream.plan(failed(code="context_length_exceeded", message="too long"))
    shield = make_proxy(upstream)
    code, _, received = request(shield.port, path=path, body=b'{"model": "m", "input": "x"}')
    assert code == 400 and json.loads(received)["error"]["code"] == "context_length_exceeded"
    assert upstream.attempts == 1


@pytest.fixture
def sdk(upstream, make_proxy):
    shield = make_proxy(upstream)
    return openai.OpenAI(base_url=shield.url + "/v1", api_key="dummy", max_retries=0, timeout=30)


def plan_failures_then_good(upstream):
    upstream.plan(status(429, headers={"retry-after-ms": "10"}), cut(150), error_event(), good(text=TEXT))


def test_sdk_chat_completions(upstream, sdk):
    plan_failures_then_good(upstream)
    completion = sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content == TEXT
    assert completion.choices[0].finish_reason == "stop" and completion.usage.total_tokens == 33
    assert upstream.attempts == 4


def test_sdk_chat_completions_streamed(upstream, sdk):
    plan_failures_then_good(upstream)
    stream = sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == TEXT and upstream.attempts == 4


def test_sdk_responses(upstream, sdk):
    plan_failures_then_good(upstream)
    response = sdk.responses.create(model="m", input="hi")
    assert response.output_text == TEXT and response.usage.output_tokens == 22
    assert upstream.attempts == 4


def test_sdk_responses_streamed(upstream, sdk):
    plan_failures_then_good(upstream)
    events = list(sdk.responses.create(model="m", input="hi", stream=True))
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert text == TEXT and events[-1].type == "response.completed"
    assert upstream.attempts == 4


def test_sdk_sees_a_clean_error_after_giving_up(upstream, make_proxy):
    upstream.plan(cut(100))
    shield = make_proxy(upstream, MAX_RETRIES="1")
    client = openai.OpenAI(base_url=shield.url + "/v1", api_key="dummy", max_retries=0, timeout=30)
    with pytest.raises(openai.APIStatusError) as caught:
        client.responses.create(model="m", input="hi")
    assert caught.value.status_code == 502 and "stream cut" in str(caught.value)


def test_a_client_that_waits_for_100_continue_gets_it_at_once(upstream, make_proxy):
    """curl sends Expect: 100-continue for big bodies; some clients wait for it before sending."""
    import socket
    shield = make_proxy(upstream, CLIENT_TIMEOUT="30")
    body = json.dumps({"model": "m", "input": "hi", "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", shield.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % len(body))
        sock.settimeout(2)  # far below CLIENT_TIMEOUT: the interim answer must not wait for it
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue\r\n")
        sock.sendall(body)
        sock.settimeout(5)
        answer = b""
        while b"response.completed" not in answer:
            data = sock.recv(65536)
            assert data, "connection closed before the answer"
            answer += data
    assert answer.startswith(b"HTTP/1.1 200 ")
