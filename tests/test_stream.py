"""SSE inspection and chat assembly: pure, fed bytes as they arrive."""

import json
import random
import time

import pytest

import proxy
from tests.fake_upstream import (_chunk, _sse, chat_error_line, chat_events, chat_stream, responses_events,
                                 responses_stream)

V = proxy.StreamVerdict


def judge(protocol, body, chunking=None):
    inspector = proxy.StreamInspector(protocol)
    step = chunking or len(body) or 1
    for start in range(0, len(body), step):
        inspector.feed(body[start:start + step])
    return inspector.verdict()


def random_feed(protocol, body, seed):
    rng = random.Random(seed)
    inspector = proxy.StreamInspector(protocol)
    start = 0
    while start < len(body):
        size = rng.randint(1, 64)
        inspector.feed(body[start:start + size])
        start += size
    assert bytes(inspector.buffer) == body
    return inspector.verdict()


TRICKY_TEXT = 'error" "type":"error" response.completed data: [DONE] "finish_reason":"stop" \n\n event: error'

RESPONSES = {
    "completed": (responses_stream(), V.COMPLETE),
    "tricky text": (responses_stream(TRICKY_TEXT), V.COMPLETE),
    "incomplete": (responses_stream(terminal="response.incomplete", incomplete_reason="max_output_tokens"),
                   V.INCOMPLETE),
    "failed, retryable": (responses_stream(terminal="response.failed",
                                           error={"code": "server_error", "message": "x"}), V.RETRY),
    "failed, final": (responses_stream(terminal="response.failed",
                                       error={"code": "context_length_exceeded", "message": "x"}), V.FAILED),
    "error event": (responses_events("hi")[0] + _sse("error", {"type": "error", "code": "server_error",
                                                              "message": "boom"}) + responses_stream(), V.RETRY),
    "error event, final": (_sse("error", {"type": "error", "code": "insufficient_quota", "message": "pay"}),
                           V.FAILED),
    "no terminator": (responses_events("hi")[0], V.UNFINISHED),
    "empty": (b"", V.UNFINISHED),
    "[DONE] after terminal": (responses_stream() + b"data: [DONE]\n\n", V.COMPLETE),
    "CRLF lines": (responses_stream().replace(b"\n", b"\r\n"), V.COMPLETE),
    "no event lines": (b"".join(line + b"\n" for line in responses_stream().split(b"\n")
                                if not line.startswith(b"event:")), V.COMPLETE),
    "comment last": (responses_stream() + b": keep-alive\n\n", V.COMPLETE),
}

CHAT = {
    "completed": (chat_stream(), V.COMPLETE),
    "tricky text": (chat_stream(TRICKY_TEXT), V.COMPLETE),
    "no [DONE]": (chat_stream(done=False), V.UNFINISHED),
    "[DONE] without finish_reason": (chat_events("hi") + b"data: [DONE]\n\n", V.UNFINISHED),
    "error line": (chat_events("hi") + chat_error_line("server_error", "x") + chat_stream(), V.RETRY),
    "error line, final": (chat_error_line("context_length_exceeded", "x"), V.FAILED),
    "[DONE] without newline": (chat_stream()[:-2], V.COMPLETE),
}


@pytest.mark.parametrize("protocol, case", [("responses", name) for name in RESPONSES] +
                         [("chat", name) for name in CHAT])
def test_verdict(protocol, case):
    body, expected = (RESPONSES if protocol == "responses" else CHAT)[case]
    assert judge(protocol, body).outcome == expected
    for chunking in (1, 7):
        assert judge(protocol, body, chunking).outcome == expected
    assert random_feed(protocol, body, seed=len(body)).outcome == expected


def test_usage_and_terminal_of_a_responses_stream():
    body = responses_stream("hello")
    verdict = judge("responses", body, 5)
    assert verdict.usage["output_tokens"] == 22
    start, end = verdict.terminal
    assert json.loads(body[start:end])["response"]["output"][0]["content"][0]["text"] == "hello"


def test_usage_of_a_chat_stream():
    assert judge("chat", chat_stream()).usage == {"prompt_tokens": 11, "completion_tokens": 22, "total_tokens": 33}
    assert judge("chat", chat_stream(usage=False)).usage is None


def test_error_details_are_kept():
    verdict = judge("responses", _sse("error", {"type": "error", "code": "rate_limit_exceeded",
                                                "message": "Please try again in 2s."}))
    assert verdict.error["code"] == "rate_limit_exceeded" and "try again in 2s" in verdict.error["message"]


def test_assemble_chat_completion():
    tool_a = {"index": 0, "id": "call_a", "type": "function", "function": {"name": "read", "arguments": '{"pa'}}
    tool_b = {"index": 1, "id": "call_b", "type": "function", "function": {"name": "ls", "arguments": ""}}
    body = (_chunk({"role": "assistant", "content": None}) + _chunk({"content": "Hel"}) + _chunk({"content": "lo"})
            + _chunk({"refusal": "no"}) + _chunk({"tool_calls": [tool_a]}) + _chunk({"tool_calls": [tool_b]})
            + _chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'th": 1}'}}]})
            + _chunk({}, finish="tool_calls") + _chunk({}, usage={"total_tokens": 5}, choices=False)
            + b"data: [DONE]\n\n")
    completion = proxy.assemble_chat_completion(body)
    assert completion["object"] == "chat.completion" and completion["id"] == "chatcmpl-fake"
    assert completion["usage"] == {"total_tokens": 5}
    (choice,) = completion["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] == "Hello" and message["refusal"] == "no" and message["role"] == "assistant"
    assert message["tool_calls"] == [
        {"id": "call_a", "type": "function", "function": {"name": "read", "arguments": '{"path": 1}'}},
        {"id": "call_b", "type": "function", "function": {"name": "ls", "arguments": ""}}]


def inspect_cost(body, chunk=64 * 1024, repeats=5):
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        inspector = proxy.StreamInspector("responses")
        for start in range(0, len(body), chunk):
            inspector.feed(body[start:start + chunk])
        assert inspector.verdict().outcome == V.COMPLETE
        best = min(best, time.process_time() - started)
    return best


def test_inspection_cost_is_linear():
    """A 4x larger stream costs less than 6x: a quadratic rescan would cost 16x."""
    small = responses_stream("word error\" " * 20000, deltas=8000)  # about 2 MB
    large = responses_stream("word error\" " * 80000, deltas=32000)  # about 8 MB
    assert 3.5 < len(large) / len(small) < 4.5
    assert inspect_cost(large) < 6 * inspect_cost(small) + 0.01
