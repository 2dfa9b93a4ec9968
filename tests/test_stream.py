"""SSE inspection and chat assembly: pure, fed bytes as they arrive.

The streams are built here, shaped like the real APIs' (compact JSON, text escaped by a
real JSON encoder, UTF-8 on the wire), so these tests do not depend on the fake upstream.
"""

import json
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retry_shield.aggregate import assemble_chat_completion
from retry_shield.sse import StreamInspector, StreamVerdict
from tests.helpers import assert_cost_is_linear

V = StreamVerdict
COMPACT = (",", ":")


# ---------------------------------------------------------------------------
# Stream builders
# ---------------------------------------------------------------------------


def encode(data, separators=COMPACT):
    return json.dumps(data, separators=separators, ensure_ascii=False).encode("utf-8")


def sse(event, data, event_lines=True, separators=COMPACT):
    head = b"event: " + event.encode() + b"\n" if event_lines else b""
    return head + b"data: " + encode(data, separators) + b"\n\n"


USAGE = {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 7,
         "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 19}
STATUS = {"response.completed": "completed", "response.incomplete": "incomplete", "response.failed": "failed"}


def response_object(status, text=None, error=None, incomplete=None, usage=None):
    output = []
    if text is not None:
        output = [{"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
                   "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}]}]
    return {"id": "resp_1", "object": "response", "created_at": 1700000000, "status": status, "background": False,
            "error": error, "incomplete_details": incomplete, "instructions": None, "max_output_tokens": None,
            "model": "gpt-4.1-2025-04-14", "output": output, "parallel_tool_calls": True,
            "previous_response_id": None, "store": True, "temperature": 1.0, "text": {"format": {"type": "text"}},
            "tool_choice": "auto", "tools": [], "top_p": 1.0, "truncation": "disabled", "usage": usage,
            "user": None, "metadata": {}}


def responses_events(deltas=("Hel", "lo"), terminal="response.completed", error=None, incomplete=None,
                     usage=USAGE, before_terminal=()):
    """(event name, data) pairs of a Responses stream; ``terminal=None`` leaves the end out."""
    text = "".join(deltas)
    seq = iter(range(1 << 30))
    item = {"id": "msg_1", "type": "message", "status": "in_progress", "content": [], "role": "assistant"}
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
    where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    events = [
        ("response.created", {"type": "response.created", "sequence_number": next(seq),
                              "response": response_object("in_progress")}),
        ("response.in_progress", {"type": "response.in_progress", "sequence_number": next(seq),
                                  "response": response_object("in_progress")}),
        ("response.output_item.added", {"type": "response.output_item.added", "sequence_number": next(seq),
                                        "output_index": 0, "item": item}),
        ("response.content_part.added", dict(where, type="response.content_part.added",
                                             sequence_number=next(seq), part=part)),
    ]
    events += [("response.output_text.delta", dict(where, type="response.output_text.delta",
                                                   sequence_number=next(seq), delta=delta, logprobs=[]))
               for delta in deltas]
    events += [
        ("response.output_text.done", dict(where, type="response.output_text.done", sequence_number=next(seq),
                                           text=text, logprobs=[])),
        ("response.content_part.done", dict(where, type="response.content_part.done", sequence_number=next(seq),
                                            part=dict(part, text=text))),
        ("response.output_item.done", {"type": "response.output_item.done", "sequence_number": next(seq),
                                       "output_index": 0, "item": dict(item, status="completed",
                                                                       content=[dict(part, text=text)])}),
    ]
    events += list(before_terminal)
    if terminal:
        events.append((terminal, {"type": terminal, "sequence_number": next(seq), "response": response_object(
            STATUS[terminal], text, error=error, incomplete=incomplete, usage=usage)}))
    return events


def responses_body(event_lines=True, separators=COMPACT, **kwargs):
    return b"".join(sse(name, data, event_lines, separators) for name, data in responses_events(**kwargs))


def error_event(code, message="An error occurred while processing your request.", nested=False):
    if nested:
        return sse("error", {"type": "error", "sequence_number": 5, "error": {
            "type": "invalid_request_error" if code == "context_length_exceeded" else "server_error",
            "code": code, "message": message, "param": None}})
    return sse("error", {"type": "error", "sequence_number": 5, "code": code, "message": message, "param": None})


CHAT_USAGE = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11,
              "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}


def chunk(delta=None, finish=None, usage=None, choices=True, index=0, logprobs=None, with_null_usage=False):
    data = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000,
            "model": "gpt-4.1-2025-04-14", "service_tier": "default", "system_fingerprint": "fp_1",
            "choices": [{"index": index, "delta": delta or {}, "logprobs": logprobs, "finish_reason": finish}]
            if choices else []}
    if usage is not None or with_null_usage:
        data["usage"] = usage
    return b"data: " + encode(data) + b"\n\n"


def chat_body(deltas=("Hel", "lo"), finish="stop", usage=CHAT_USAGE, done=True, null_usage=False):
    body = chunk({"role": "assistant", "content": "", "refusal": None}, with_null_usage=null_usage)
    body += b"".join(chunk({"content": delta}, with_null_usage=null_usage) for delta in deltas)
    if finish:
        body += chunk({}, finish=finish, with_null_usage=null_usage)
    if usage:
        body += chunk(choices=False, usage=usage)
    return body + (b"data: [DONE]\n\n" if done else b"")


def chat_error(code, message="The server had an error while processing your request."):
    return b"data: " + encode({"error": {"message": message, "type": "server_error" if code == "server_error"
                                         else "invalid_request_error", "param": None, "code": code}}) + b"\n\n"


# Generated text that names the markers the inspector looks for. A real server escapes it
# as JSON; the last delta ends with "error", so its closing quote makes a bare `error"`.
TRICKY = ('The "error" key; error" here, "type":"error", {"error": {"code": "server_error"}} and ',
          'response.completed, response.failed, data: [DONE], "finish_reason":"stop"\n\nevent: error\n',
          'data: {"type":"error","code":"server_error"}\n\n', " déjà vu ✓ 错误 ", "an error")


# ---------------------------------------------------------------------------
# Feeding
# ---------------------------------------------------------------------------


def feed(protocol, body, sizes):
    """Feed ``body`` in pieces whose sizes come from the iterator ``sizes``; return the verdict."""
    inspector = StreamInspector(protocol)
    start = 0
    while start < len(body):
        size = next(sizes)
        inspector.feed(body[start:start + size])
        start += size
    assert bytes(inspector.body) == body
    return inspector.verdict()


def whole(protocol, body):
    inspector = StreamInspector(protocol)
    inspector.feed(body)
    return inspector.verdict()


def byte_by_byte(protocol, body):
    return feed(protocol, body, iter(lambda: 1, None))


def random_chunks(protocol, body, seed):
    rng = random.Random(seed)
    return feed(protocol, body, iter(lambda: rng.randint(1, 97), None))


def in_a_reused_buffer(protocol, body):
    """Fed in pieces into a buffer that held an earlier answer: its stale tail must not count."""
    stale = (error_event("server_error") + responses_body() if protocol == "responses"
             else chat_error("server_error") + chat_body())
    buffer = bytearray(stale * (2 + len(body) // len(stale)))
    inspector = StreamInspector(protocol, buffer)
    for start in range(0, len(body), 61):
        inspector.feed(body[start:start + 61])
    assert bytes(inspector.body) == body
    return inspector.verdict()


def judged_the_same_in_every_chunking(protocol, body):
    """The verdict for ``body`` fed whole, after checking byte-by-byte, random chunkings and a reused buffer agree."""
    verdict = whole(protocol, body)
    assert byte_by_byte(protocol, body) == verdict
    assert in_a_reused_buffer(protocol, body) == verdict
    for seed in range(8):
        assert random_chunks(protocol, body, seed) == verdict, "seed %d" % seed
    return verdict


# ---------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------


def test_a_complete_responses_stream():
    body = responses_body()
    verdict = judged_the_same_in_every_chunking("responses", body)
    assert verdict.outcome == V.COMPLETE and verdict.deliverable
    assert verdict.usage == USAGE and verdict.error is None
    start, end = verdict.terminal
    assert json.loads(body[start:end]) == responses_events()[-1][1]


RESPONSES = {
    "completed": (responses_body(), V.COMPLETE),
    "text naming every marker": (responses_body(deltas=TRICKY), V.COMPLETE),
    "spaces after colons ('error': null)": (responses_body(separators=(", ", ": ")), V.COMPLETE),
    "no event: lines": (responses_body(event_lines=False), V.COMPLETE),
    "CRLF line ends": (responses_body().replace(b"\n", b"\r\n"), V.COMPLETE),
    "[DONE] after the terminal event": (responses_body() + b"data: [DONE]\n\n", V.COMPLETE),
    "keep-alive comment at the end": (responses_body() + b": keep-alive\n\n", V.COMPLETE),
    "incomplete": (responses_body(terminal="response.incomplete", incomplete={"reason": "max_output_tokens"}),
                   V.INCOMPLETE),
    "failed, server_error": (responses_body(terminal="response.failed", error={
        "code": "server_error", "message": "The model failed."}), V.RETRY),
    "failed, no code": (responses_body(terminal="response.failed", error=None), V.RETRY),
    "failed, context_length_exceeded": (responses_body(terminal="response.failed", error={
        "code": "context_length_exceeded", "message": "Too long."}), V.FAILED),
    "error event mid-stream": (responses_body(before_terminal=[("error", {
        "type": "error", "sequence_number": 9, "code": "server_error", "message": "boom", "param": None})]),
        V.RETRY),
    "error event first": (error_event("server_error") + responses_body(), V.RETRY),
    "error event, nested error object": (error_event("server_error", nested=True), V.RETRY),
    "error event, final code": (error_event("insufficient_quota"), V.FAILED),
    "error event, final code, nested": (error_event("context_length_exceeded", nested=True), V.FAILED),
    "no terminator": (responses_body(terminal=None), V.UNFINISHED),
    "cut after the first event": (responses_body()[:responses_body().index(b"\n\n") + 2], V.UNFINISHED),
    "empty": (b"", V.UNFINISHED),
}


@pytest.mark.parametrize("case", list(RESPONSES))
def test_responses_verdict(case):
    body, expected = RESPONSES[case]
    assert judged_the_same_in_every_chunking("responses", body).outcome == expected


def test_incomplete_and_failed_keep_usage_and_error():
    incomplete = whole("responses", RESPONSES["incomplete"][0])
    assert incomplete.usage == USAGE and incomplete.terminal is not None
    failed = whole("responses", RESPONSES["failed, context_length_exceeded"][0])
    assert failed.error == {"code": "context_length_exceeded", "message": "Too long."}
    assert "context_length_exceeded" in failed.detail


def test_error_events_keep_code_and_message():
    flat = whole("responses", error_event("rate_limit_exceeded", "Rate limit reached. Please try again in 2s."))
    assert flat.outcome == V.RETRY
    assert flat.error["code"] == "rate_limit_exceeded" and flat.error["message"].endswith("try again in 2s.")
    nested = whole("responses", error_event("server_error", "deep", nested=True))
    assert nested.error["code"] == "server_error" and nested.error["message"] == "deep"


def test_tricky_text_is_really_in_the_stream():
    """The no-false-alarm case above is only worth something if the markers are on the wire."""
    body = RESPONSES["text naming every marker"][0]
    assert body.count(b'error"') >= 5  # closing quotes of the text that ends in "error", and "error":null
    assert b'\\"type\\":\\"error\\"' in body and b"response.completed, response.failed" in body
    assert b'data: {"type":"error"' not in body  # ...but never unescaped, as a real server sends it
    spaced = RESPONSES["spaces after colons ('error': null)"][0]
    assert b'"error": null' in spaced


@pytest.mark.parametrize("terminal, event_lines, where", [
    ("response.completed", True, "just after data:"), ("response.completed", True, "mid-line"),
    ("response.completed", False, "one byte short"), ("response.incomplete", True, "one byte short")])
def test_a_terminal_event_cut_mid_line_is_unfinished(terminal, event_lines, where):
    """The connection can drop inside the last line (it holds the whole answer, so it is often
    the longest one): received bytes that stop inside the terminal event's JSON are no terminator."""
    body = responses_body(event_lines=event_lines, terminal=terminal, deltas=("Hello ", "world ") * 20)
    line_start = body.rindex(b"data: ") + len(b"data: ")
    json_end = body.rindex(b"}") + 1
    cut = {"just after data:": line_start + 1, "mid-line": (line_start + json_end) // 2,
           "one byte short": json_end - 1}[where]
    verdict = judged_the_same_in_every_chunking("responses", body[:cut])
    assert verdict.outcome == V.UNFINISHED, "cut at %d of %d: %s" % (cut, len(body), verdict)


# ---------------------------------------------------------------------------
# Chat Completions
# ---------------------------------------------------------------------------


CHAT = {
    "completed": (chat_body(), V.COMPLETE),
    "text naming every marker": (chat_body(deltas=TRICKY), V.COMPLETE),
    "usage null in every chunk but the last": (chat_body(null_usage=True), V.COMPLETE),
    "no usage chunk": (chat_body(usage=None), V.COMPLETE),
    "CRLF line ends": (chat_body().replace(b"\n", b"\r\n"), V.COMPLETE),
    "Azure prompt filter chunk first": (b"data: " + encode({"choices": [], "created": 0, "id": "", "model": "",
                                                            "object": "", "prompt_filter_results": [{
                                                                "prompt_index": 0, "content_filter_results": {
                                                                    "hate": {"filtered": False,
                                                                             "severity": "safe"}}}]})
                                        + b"\n\n" + chat_body(), V.COMPLETE),
    "[DONE] without finish_reason": (chat_body(finish=None, usage=None), V.UNFINISHED),
    "no [DONE]": (chat_body(done=False), V.UNFINISHED),
    "cut inside [DONE]": (chat_body()[:-len(b"NE]\n\n")], V.UNFINISHED),
    "error line mid-stream": (chat_body(finish=None, usage=None, done=False) + chat_error("server_error")
                              + chat_body(), V.RETRY),
    "error line alone": (chat_error("server_error"), V.RETRY),
    "error line, final code": (chat_error("context_length_exceeded"), V.FAILED),
    "error line, final code, then [DONE]": (chat_body(finish=None, usage=None, done=False)
                                            + chat_error("content_filter") + b"data: [DONE]\n\n", V.FAILED),
    "empty": (b"", V.UNFINISHED),
}


@pytest.mark.parametrize("case", list(CHAT))
def test_chat_verdict(case):
    body, expected = CHAT[case]
    assert judged_the_same_in_every_chunking("chat", body).outcome == expected


def test_chat_usage_comes_from_the_last_chunk():
    assert whole("chat", chat_body()).usage == CHAT_USAGE
    assert whole("chat", chat_body(null_usage=True)).usage == CHAT_USAGE
    assert whole("chat", chat_body(usage=None)).usage is None
    assert whole("chat", chat_body(null_usage=True, usage=None)).usage is None


def test_chat_error_line_keeps_the_error():
    verdict = whole("chat", chat_error("context_length_exceeded", "This model's maximum context length is 8192."))
    assert verdict.error["code"] == "context_length_exceeded"
    assert verdict.error["message"] == "This model's maximum context length is 8192."


# ---------------------------------------------------------------------------
# Chat assembly for non-streaming clients
# ---------------------------------------------------------------------------


def test_assemble_text_answer():
    completion = assemble_chat_completion(chat_body(deltas=TRICKY))
    assert completion["object"] == "chat.completion"
    assert (completion["id"], completion["created"], completion["model"], completion["system_fingerprint"]) == (
        "chatcmpl-1", 1700000000, "gpt-4.1-2025-04-14", "fp_1")
    assert completion["usage"] == CHAT_USAGE
    (choice,) = completion["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "".join(TRICKY)
    assert choice["message"]["refusal"] is None and "tool_calls" not in choice["message"]


def test_assemble_without_usage_has_no_usage():
    assert "usage" not in assemble_chat_completion(chat_body(usage=None))


def test_assemble_refusal():
    body = (chunk({"role": "assistant", "content": None, "refusal": ""}) + chunk({"refusal": "I can"})
            + chunk({"refusal": "'t help with that."}) + chunk({}, finish="stop") + b"data: [DONE]\n\n")
    (choice,) = assemble_chat_completion(body)["choices"]
    assert choice["message"]["refusal"] == "I can't help with that."
    assert choice["message"]["content"] is None


def test_assemble_tool_calls_with_arguments_joined():
    def call(index, **fields):
        return chunk({"tool_calls": [dict(fields, index=index)]})

    body = (chunk({"role": "assistant", "content": None})
            + call(0, id="call_a", type="function", function={"name": "read_file", "arguments": ""})
            + call(0, function={"arguments": '{"pa'}) + call(0, function={"arguments": 'th": "a.py", '})
            + call(1, id="call_b", type="function", function={"name": "shell", "arguments": '{"cmd":'})
            + call(0, function={"arguments": '"n": 1}'}) + call(1, function={"arguments": ' ["ls", "-l"]}'})
            + chunk({}, finish="tool_calls") + chunk(choices=False, usage=CHAT_USAGE) + b"data: [DONE]\n\n")
    completion = assemble_chat_completion(body)
    (choice,) = completion["choices"]
    assert choice["finish_reason"] == "tool_calls" and completion["usage"] == CHAT_USAGE
    message = choice["message"]
    assert message["content"] is None
    assert message["tool_calls"] == [
        {"id": "call_a", "type": "function",
         "function": {"name": "read_file", "arguments": '{"path": "a.py", "n": 1}'}},
        {"id": "call_b", "type": "function", "function": {"name": "shell", "arguments": '{"cmd": ["ls", "-l"]}'}},
    ]
    for tool_call in message["tool_calls"]:
        json.loads(tool_call["function"]["arguments"])


def test_assemble_several_choices():
    body = (chunk({"role": "assistant", "content": ""}, index=0) + chunk({"role": "assistant", "content": ""}, index=1)
            + chunk({"content": "A"}, index=1) + chunk({"content": "x"}, index=0) + chunk({"content": "B"}, index=1)
            + chunk({}, finish="length", index=1) + chunk({"content": "y"}, index=0) + chunk({}, finish="stop")
            + b"data: [DONE]\n\n")
    choices = assemble_chat_completion(body)["choices"]
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in choices] == [
        (0, "xy", "stop"), (1, "AB", "length")]


def test_assemble_joins_logprobs_of_every_chunk():
    """A non-streaming answer carries the logprobs of every token, not only the last chunk's."""
    def token(text):
        return {"token": text, "logprob": -0.5, "bytes": list(text.encode()), "top_logprobs": []}

    body = (chunk({"role": "assistant", "content": ""}, logprobs={"content": [], "refusal": None})
            + chunk({"content": "Hel"}, logprobs={"content": [token("Hel")], "refusal": None})
            + chunk({"content": "lo"}, logprobs={"content": [token("lo")], "refusal": None})
            + chunk({}, finish="stop") + b"data: [DONE]\n\n")
    (choice,) = assemble_chat_completion(body)["choices"]
    assert choice["message"]["content"] == "Hello"
    assert choice["logprobs"]["content"] == [token("Hel"), token("lo")]


# ---------------------------------------------------------------------------
# Cost
# ---------------------------------------------------------------------------


def big_responses_stream(deltas):
    """A Responses stream with ``deltas`` text deltas; one line in four holds a bare `error"` to judge."""
    texts = ["lorem ipsum dolor sit amet, consectetur error", 'quoted "error" and "type":"error" text ',
             "sed do eiusmod tempor incididunt ut labore ", "et dolore magna aliqua; ut enim ad minim "]
    lines = [sse("response.output_text.delta", {"type": "response.output_text.delta", "sequence_number": 7,
                                                "item_id": "msg_1", "output_index": 0, "content_index": 0,
                                                "delta": text, "logprobs": []}) for text in texts]
    text = "".join(texts) * (deltas // len(texts))
    head = b"".join(sse(name, data) for name, data in responses_events(deltas=(), terminal=None)[:4])
    tail = responses_body(deltas=(text,))
    return head + b"".join(lines) * (deltas // len(texts)) + tail[tail.index(b"event: response.output_text.done"):]


def inspection_cpu(protocol, body, chunk_size=64 * 1024):
    started = time.process_time()
    inspector = StreamInspector(protocol)
    for start in range(0, len(body), chunk_size):
        inspector.feed(body[start:start + chunk_size])
    verdict = inspector.verdict()
    spent = time.process_time() - started
    assert verdict.outcome == V.COMPLETE
    return spent


def test_inspection_cost_is_linear():
    """4x the stream costs less than 6x the CPU; a rescan of what was seen would cost about 16x.

    Both protocols share feed(), where the cost grows with the stream; the verdict reads a fixed tail.
    """
    small, large = big_responses_stream(5000), big_responses_stream(20000)
    assert 1.8e6 < len(small) < 2.6e6 and 3.9 < len(large) / len(small) < 4.1
    # 10 ms of slack: the large buffer outgrows the CPU caches, a constant cost, not a rescan (~350 ms)
    assert_cost_is_linear(lambda body: inspection_cpu("responses", body), small, large, slack=0.01)


def test_a_reused_buffer_still_viewed_elsewhere_is_left_for_a_fresh_one():
    buffer = bytearray(8)
    view = memoryview(buffer)  # e.g. an answer still being sent: this buffer cannot grow
    inspector = StreamInspector("responses", buffer)
    body = responses_body()
    inspector.feed(body[:5])
    inspector.feed(body[5:])
    assert bytes(inspector.body) == body
    assert inspector.verdict().outcome == V.COMPLETE
    assert bytes(view[:5]) == body[:5]


ODD_CHUNKS = [
    {"choices": "not a list"}, {"choices": [1, None, "x"]}, {"choices": [{"delta": "a string"}]},
    {"choices": [{"index": "0", "delta": {"content": 42, "role": ["assistant"]}}]},
    {"choices": [{"delta": {"tool_calls": ["call", 7, {"function": "f"}]}}]},
    {"choices": [{"delta": {"content": "kept"}, "finish_reason": ["stop"]}], "usage": [1, 2]},
]


def test_odd_values_from_an_upstream_are_skipped_not_fatal():
    body = b"".join(b"data: " + json.dumps(chunk).encode() + b"\n\n" for chunk in ODD_CHUNKS) + b"data: [DONE]\n\n"
    completion = assemble_chat_completion(body)
    (choice,) = completion["choices"]
    assert choice["message"]["content"] == "kept" and choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] is None and "usage" not in completion


@pytest.mark.parametrize("error", [{"code": ["context_length_exceeded"]}, {"type": {"a": 1}}, {"code": 429}])
def test_an_error_with_odd_code_or_type_is_judged_not_fatal(error):
    inspector = StreamInspector("chat")
    inspector.feed(b"data: " + json.dumps({"error": dict(error, message="m")}).encode() + b"\n\n")
    assert inspector.verdict().outcome == V.RETRY


def compact_chunk(text, **extra):
    value = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    value.update(extra)
    return b"data: " + json.dumps(value, separators=(",", ":")).encode() + b"\n\n"


@settings(max_examples=200, deadline=None)
@given(texts=st.lists(st.text(max_size=12), max_size=12), ascii_only=st.booleans())
def test_content_only_chunks_read_without_parsing_give_what_parsing_gives(texts, ascii_only):
    """Compact content-only chunks are taken by the DATA_LINE fast path; the result is what parsing gives."""
    def chunk(text):
        value = json.loads(compact_chunk(text)[6:])
        return b"data: " + json.dumps(value, separators=(",", ":"), ensure_ascii=ascii_only).encode() + b"\n\n"
    role = chunk("")[:-2].replace(b'"delta":{"content":""}', b'"delta":{"role":"assistant","content":""}') + b"\n\n"
    body = role + b"".join(chunk(text) for text in texts) + chunk("")[:-2].replace(
        b'"finish_reason":null', b'"finish_reason":"stop"') + b"\n\ndata: [DONE]\n\n"
    (choice,) = assemble_chat_completion(body)["choices"]
    assert choice["message"]["content"] == "".join(texts)
    assert choice["finish_reason"] == "stop" and completion_id(body) == "c"


def completion_id(body):
    return assemble_chat_completion(body).get("id")


def test_fast_and_parsed_chunks_keep_their_order():
    tool = b'data: {"choices":[{"index":0,"delta":{"content":"B","tool_calls":[]},"finish_reason":null}]}\n\n'
    body = compact_chunk("A") + tool + compact_chunk("C") + b"data: [DONE]\n\n"
    assert assemble_chat_completion(body)["choices"][0]["message"]["content"] == "ABC"


def test_a_bad_escape_drops_only_its_own_chunk():
    bad = compact_chunk("X").replace(b'"content":"X"', b'"content":"\\q"')
    body = compact_chunk("a") + bad + compact_chunk("b") + b"data: [DONE]\n\n"
    assert assemble_chat_completion(body)["choices"][0]["message"]["content"] == "ab"


def test_a_chunk_with_more_than_text_is_parsed():
    usage = compact_chunk("t", usage={"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3})
    completion = assemble_chat_completion(compact_chunk("s") + usage + b"data: [DONE]\n\n")
    assert completion["choices"][0]["message"]["content"] == "st" and completion["usage"]["total_tokens"] == 3
