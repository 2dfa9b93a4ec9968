"""Responses answers turned into Chat Completions answers: pure, checked with the openai SDK's own types.

The Responses streams are built here, whole (the proxy translates only an answer it has judged
complete), in the API's event order, and judged by the real StreamInspector for the terminal
span the proxy passes. Every completion and chunk is checked with the SDK's pydantic models, and
the chunk streams are fed to the SDK's own accumulator and client (over a mock transport: no sockets).
"""

import json
import time
from pathlib import Path

import httpx2
import pytest
from openai import OpenAI
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage

from retry_shield.responses_answer import chat_chunks, chat_completion, failed_error
from retry_shield.responses_reading import responses_answer
from retry_shield.responses_request import ResponsesPlan
from retry_shield.sse import StreamInspector, StreamVerdict
from tests.fake_upstream import responses_stream
from tests.helpers import assert_cost_is_linear

COMPACT = (",", ":")
CAPTURES = Path(__file__).parent / "captures"
IDS = "0123456789abcdef0123456789abcdef"
CREATED = 1700000200
MODEL = "gpt-5-codex"
PLAN = ResponsesPlan(model="gpt-5-codex", include_usage=True, tool_names=frozenset({"exec_command", "read_file"}))
QUIET = PLAN._replace(include_usage=False)
USAGE = {"input_tokens": 1200, "input_tokens_details": {"cached_tokens": 1024},
         "output_tokens": 300, "output_tokens_details": {"reasoning_tokens": 256}, "total_tokens": 1500}
CHUNK_FIELDS = {field.alias or name for name, field in ChatCompletionChunk.model_fields.items()}
COMPLETION_FIELDS = {field.alias or name for name, field in ChatCompletion.model_fields.items()}
MESSAGE_FIELDS = {field.alias or name for name, field in ChatCompletionMessage.model_fields.items()}


# ---------------------------------------------------------------------------
# Responses stream builders, in the API's event order
# ---------------------------------------------------------------------------


def message(text, id="msg_1", annotations=()):
    return {"type": "message", "id": id, "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": list(annotations), "logprobs": []}]}


def reasoning(summary=(), content=(), id="rs_1"):
    item = {"type": "reasoning", "id": id, "summary": [{"type": "summary_text", "text": text} for text in summary]}
    if content:
        item["content"] = [{"type": "reasoning_text", "text": text} for text in content]
    item["encrypted_content"] = None
    return item


def function_call(name, arguments, call_id="call_1", id="fc_1"):
    return {"type": "function_call", "id": id, "call_id": call_id, "name": name, "arguments": arguments,
            "status": "completed"}


CALL_EVENTS = {"function_call": ("arguments", "function_call_arguments"),
               "custom_tool_call": ("input", "custom_tool_call_input")}


def split(text, pieces):
    size = max(1, -(-len(text) // pieces))
    return [text[start:start + size] for start in range(0, len(text), size)]


def stream(*items, status="completed", usage=USAGE, reason=None, error=None, deltas=3, event_lines=True,
           type_last=False, terminal_output=True, item_done=True, args_done=True, args_in_item=True, model=MODEL):
    """A whole Responses stream of ``items``, each streamed as the API streams it, then the terminal event.

    ``args_done`` / ``args_in_item``: whether a call's arguments (or input) come in their done event /
    in its output_item.done; ``item_done``: whether items get their output_item.done at all;
    ``type_last``: data lines with "type" as their last key (servers that dump the SDK's models).
    """
    events = []

    def add(kind, **fields):
        data = dict(type=kind, sequence_number=len(events), **fields)
        if type_last:
            data = dict(sorted(data.items(), key=lambda pair: pair[0] == "type"))
        line = b"data: " + json.dumps(data, separators=COMPACT, ensure_ascii=False).encode("utf-8") + b"\n\n"
        events.append((b"event: " + kind.encode() + b"\n" if event_lines else b"") + line)

    base = {"id": "resp_1", "object": "response", "created_at": 1700000000, "model": model, "error": None,
            "incomplete_details": None, "service_tier": "default", "metadata": {}, "usage": None}
    add("response.created", response=dict(base, status="in_progress", output=[]))
    add("response.in_progress", response=dict(base, status="in_progress", output=[]))
    for index, item in enumerate(items):
        where = {"item_id": item["id"], "output_index": index}
        kind = item["type"]
        if kind == "message":
            add("response.output_item.added", output_index=index, item=dict(item, status="in_progress", content=[]))
            for number, part in enumerate(item["content"]):
                at = dict(where, content_index=number)
                field, name = ("text", "output_text") if part["type"] == "output_text" else ("refusal", "refusal")
                add("response.content_part.added", part=dict(part, **{field: ""}), **at)
                extra = {"logprobs": []} if field == "text" else {}
                for piece in split(part[field], deltas):
                    add("response.%s.delta" % name, delta=piece, **at, **extra)
                add("response.%s.done" % name, **{field: part[field]}, **at, **extra)
                add("response.content_part.done", part=part, **at)
        elif kind == "reasoning":
            add("response.output_item.added", output_index=index, item=dict(item, summary=[], content=[]))
            for number, part in enumerate(item["summary"]):
                at = dict(where, summary_index=number)
                add("response.reasoning_summary_part.added", part=dict(part, text=""), **at)
                for piece in split(part["text"], deltas):
                    add("response.reasoning_summary_text.delta", delta=piece, **at)
                add("response.reasoning_summary_text.done", text=part["text"], **at)
                add("response.reasoning_summary_part.done", part=part, **at)
            for number, part in enumerate(item.get("content") or ()):
                at = dict(where, content_index=number)
                for piece in split(part["text"], deltas):
                    add("response.reasoning_text.delta", delta=piece, **at)
                add("response.reasoning_text.done", text=part["text"], **at)
        elif kind in CALL_EVENTS:
            field, name = CALL_EVENTS[kind]
            add("response.output_item.added", output_index=index, item=dict(item, status="in_progress", **{field: ""}))
            for piece in split(item[field], deltas):
                add("response.%s.delta" % name, delta=piece, **where)
            if args_done:
                add("response.%s.done" % name, **{field: item[field]}, **where)
        else:
            add("response.output_item.added", output_index=index, item=item)
        if item_done:
            done = item if kind not in CALL_EVENTS or args_in_item else dict(item, **{CALL_EVENTS[kind][0]: ""})
            add("response.output_item.done", output_index=index, item=done)
    terminal = {"completed": "response.completed", "incomplete": "response.incomplete",
                "failed": "response.failed"}[status]
    add(terminal, response=dict(base, status=status, output=list(items) if terminal_output else [], usage=usage,
                                error=error, incomplete_details={"reason": reason} if reason else None))
    return b"".join(events)


def judged(body):
    """The terminal span the proxy's inspector gives for ``body`` (it must be deliverable)."""
    inspector = StreamInspector("responses")
    inspector.feed(body)
    verdict = inspector.verdict()
    assert verdict.deliverable, verdict
    return verdict.terminal


def answer(body):
    return responses_answer(body, judged(body))


# ---------------------------------------------------------------------------
# Checks with the SDK's types
# ---------------------------------------------------------------------------


def completion_of(body, plan=PLAN):
    """The non-streaming answer, checked: every field of the SDK's ChatCompletion, validated."""
    completion = chat_completion(answer(body), plan, IDS, CREATED)
    assert set(completion) == COMPLETION_FIELDS
    (choice,) = completion["choices"]
    assert set(choice) == {"index", "message", "logprobs", "finish_reason"}
    assert MESSAGE_FIELDS - {"tool_calls"} <= set(choice["message"])
    assert completion["id"] == "chatcmpl-" + IDS and completion["created"] == CREATED
    assert completion["usage"] is not None
    ChatCompletion.model_validate(completion)
    return completion


def chunks_of(body, plan=PLAN):
    """The streamed answer, checked frame by frame, and its SDK accumulation (which must match the
    non-streaming answer of the same response)."""
    response = answer(body)
    stream_bytes = chat_chunks(response, plan, IDS, CREATED)
    chunks = decoded(stream_bytes)
    state = ChatCompletionStreamState()
    for chunk in chunks:
        assert set(chunk) == CHUNK_FIELDS
        assert chunk["id"] == "chatcmpl-" + IDS and chunk["object"] == "chat.completion.chunk"
        for choice in chunk["choices"]:
            assert set(choice) == {"index", "delta", "logprobs", "finish_reason"} and choice["index"] == 0
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finishes = [chunk for chunk in chunks if chunk["choices"] and chunk["choices"][0]["finish_reason"]]
    assert len(finishes) == 1 and finishes[0]["choices"][0]["delta"] == {}
    if plan.include_usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] is not None
        assert chunks.index(finishes[0]) == len(chunks) - 2
        assert all(chunk["usage"] is None for chunk in chunks[:-1])
    else:
        assert chunks[-1] is finishes[0] and all(chunk["usage"] is None for chunk in chunks)
    # get_final_completion raises on length and content_filter (it cannot parse such an answer)
    final = state.current_completion_snapshot
    whole = chat_completion(response, plan, IDS, CREATED)["choices"][0]
    assert final.choices[0].finish_reason == whole["finish_reason"]
    assert final.choices[0].message.content == whole["message"]["content"]
    assert final.choices[0].message.refusal == whole["message"]["refusal"]
    calls = [(call.id, call.type, call.function.name, call.function.arguments)
             for call in final.choices[0].message.tool_calls or ()]
    assert calls == [(call["id"], call["type"], call["function"]["name"], call["function"]["arguments"])
                     for call in whole["message"].get("tool_calls") or ()]
    reasoning = "".join(chunk["choices"][0]["delta"].get("reasoning_content", "") for chunk in chunks
                        if chunk["choices"])
    assert reasoning == whole["message"].get("reasoning_content", "")
    return chunks


def decoded(stream_bytes):
    assert stream_bytes.endswith(b"data: [DONE]\n\n") and b"\r" not in stream_bytes
    frames = stream_bytes.split(b"\n\n")
    assert frames[-2:] == [b"data: [DONE]", b""]
    for frame in frames[:-2]:
        assert frame.startswith(b"data: {") and b"\n" not in frame
    return [json.loads(frame[6:]) for frame in frames[:-2]]


def deltas(chunks, field):
    """The values of ``field`` in the deltas after the first (the role's)."""
    return [chunk["choices"][0]["delta"][field] for chunk in chunks[1:]
            if chunk["choices"] and field in chunk["choices"][0]["delta"]]


def sdk_client(body, content_type="text/event-stream"):
    def reply(request):
        return httpx2.Response(200, headers={"content-type": content_type}, content=body)

    return OpenAI(api_key="unused", base_url="http://shield.invalid/v1", max_retries=0,
                  http_client=httpx2.Client(transport=httpx2.MockTransport(reply)),
                  _strict_response_validation=True)


TOOLS = [{"type": "function", "function": {"name": "exec_command", "parameters": {
    "type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}}}]


# ---------------------------------------------------------------------------
# Text, reasoning, refusal
# ---------------------------------------------------------------------------


def test_fake_upstreams_stream_becomes_a_complete_chat_completion():
    completion = completion_of(responses_stream("Hello from upstream", deltas=5))
    assert completion == {
        "id": "chatcmpl-" + IDS, "object": "chat.completion", "created": CREATED, "model": "gpt-fake",
        "service_tier": None, "system_fingerprint": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from upstream", "refusal": None,
                                             "annotations": [], "audio": None, "function_call": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 22, "total_tokens": 33,
                  "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
        "metadata": None, "moderation": None}


def test_text_streams_as_role_content_finish_usage_done():
    chunks = chunks_of(stream(message("Hello world")))
    assert [chunk["choices"][0]["delta"] if chunk["choices"] else "usage" for chunk in chunks] == [
        {"role": "assistant", "content": "", "refusal": None}, {"content": "Hello world"}, {}, "usage"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[0]["model"] == MODEL and chunks[0]["service_tier"] == "default"
    assert chunks[0]["system_fingerprint"] is None and chunks[0]["created"] == CREATED


def test_without_include_usage_there_is_no_usage_chunk():
    chunks = chunks_of(stream(message("Hi")), plan=QUIET)
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks] == [None, None, "stop"]


def test_multibyte_text_goes_out_as_utf8():
    text = "Grüße 日本語 👩‍💻 e\u0301 \u2028 \"quoted\" \\ "
    body = stream(message(text), deltas=7)
    stream_bytes = chat_chunks(answer(body), PLAN, IDS, CREATED)
    assert text.encode("utf-8")[:12] in stream_bytes and "👩‍💻".encode("utf-8") in stream_bytes
    assert deltas(chunks_of(body), "content") == [text]


def test_a_lone_surrogate_goes_out_as_an_escape():
    body = stream(message("x")).replace(b'"x"', b'"bad \\ud83d end"')
    stream_bytes = chat_chunks(answer(body), PLAN, IDS, CREATED)
    stream_bytes.decode("utf-8")
    assert b"\\ud83d" in stream_bytes
    assert deltas(decoded(stream_bytes), "content") == ["bad \ud83d end"]


def test_reasoning_summary_streams_as_reasoning_content_before_the_text():
    body = stream(reasoning(summary=["**Plan**\n\nRead the file.", "**Then**\n\nAnswer."]), message("Done."))
    completion = completion_of(body)
    assert completion["choices"][0]["message"]["reasoning_content"] == (
        "**Plan**\n\nRead the file.\n\n**Then**\n\nAnswer.")
    chunks = chunks_of(body)
    kinds = [next(iter(chunk["choices"][0]["delta"])) for chunk in chunks[1:-2]]
    assert kinds == ["reasoning_content", "content"]


def test_reasoning_text_wins_over_its_summary_and_items_are_paragraphs():
    body = stream(reasoning(summary=["Short."], content=["Step one. ", "Step two."]), message("Preamble.", id="msg_1"),
                  reasoning(summary=["More."], id="rs_2"), message("Answer.", id="msg_2"))
    message_ = completion_of(body)["choices"][0]["message"]
    assert message_["reasoning_content"] == "Step one. Step two.\n\nMore."
    assert message_["content"] == "Preamble.\n\nAnswer."
    chunks = chunks_of(body)
    assert deltas(chunks, "reasoning_content") == ["Step one. Step two.", "\n\nMore."]
    assert deltas(chunks, "content") == ["Preamble.", "\n\nAnswer."]
    positions = [index for index, chunk in enumerate(chunks) if chunk["choices"] and (
        "reasoning_content" in chunk["choices"][0]["delta"])]
    assert max(positions) < min(index for index, chunk in enumerate(chunks) if chunk["choices"] and (
        "content" in chunk["choices"][0]["delta"]) and index > 0)


def test_no_reasoning_text_no_reasoning_field():
    body = stream(reasoning(), message("x"))  # an encrypted-only reasoning item, as with store: false
    assert "reasoning_content" not in completion_of(body)["choices"][0]["message"]
    assert deltas(chunks_of(body), "reasoning_content") == []


def test_refusal():
    item = {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
            "content": [{"type": "refusal", "refusal": "I can't help with that."}]}
    completion = completion_of(stream(item))
    assert completion["choices"][0]["message"]["content"] is None
    assert completion["choices"][0]["message"]["refusal"] == "I can't help with that."
    chunks = chunks_of(stream(item))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None, "refusal": None}
    assert deltas(chunks, "refusal") == ["I can't help with that."]


def test_url_citations_become_annotations_with_indexes_in_the_whole_content():
    cite = {"type": "url_citation", "start_index": 0, "end_index": 4, "title": "Ex", "url": "https://ex.org"}
    body = stream(message("Intro", id="msg_1"), message("Cite here.", id="msg_2", annotations=[
        cite, {"type": "file_citation", "file_id": "file_1", "filename": "a.txt", "index": 2}]))
    message_ = completion_of(body)["choices"][0]["message"]
    assert message_["content"] == "Intro\n\nCite here."
    (note,) = message_["annotations"]
    assert note == {"type": "url_citation", "url_citation": {"end_index": 11, "start_index": 7, "title": "Ex",
                                                              "url": "https://ex.org"}}
    assert message_["content"][7:11] == "Cite"


def test_empty_answer():
    completion = completion_of(stream())
    assert completion["choices"][0]["message"]["content"] is None
    assert completion["choices"][0]["finish_reason"] == "stop"
    assert chunks_of(stream())[0]["choices"][0]["delta"]["content"] is None


# ---------------------------------------------------------------------------
# Tool calls
# ---------------------------------------------------------------------------


def test_a_call_with_arguments_only_in_output_item_done():
    body = stream(function_call("exec_command", '{"cmd":"ls -l"}'), args_done=False, deltas=1)
    body = b"\n\n".join(frame for frame in body.split(b"\n\n") if b"function_call_arguments.delta" not in frame)
    assert b"function_call_arguments" not in body
    completion = completion_of(body)
    assert completion["choices"][0]["finish_reason"] == "tool_calls"
    assert completion["choices"][0]["message"]["content"] is None
    assert completion["choices"][0]["message"]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "exec_command", "arguments": '{"cmd":"ls -l"}'}}]
    chunks = chunks_of(body)
    assert deltas(chunks, "tool_calls") == [
        [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "exec_command", "arguments": ""}}],
        [{"index": 0, "function": {"arguments": '{"cmd":"ls -l"}'}}]]


@pytest.mark.parametrize("terminal_output", [True, False])
def test_a_call_with_arguments_only_in_function_call_arguments_done(terminal_output):
    item = function_call("exec_command", '{"cmd":"pwd"}')
    body = stream(item, args_in_item=False, terminal_output=False)
    if terminal_output:  # the terminal's own item lacks them too
        body = body.replace(b'"output":[]', b'"output":[' + json.dumps(dict(item, arguments=""), separators=COMPACT)
                            .encode() + b"]")
    call = completion_of(body)["choices"][0]["message"]["tool_calls"][0]
    assert call["function"] == {"name": "exec_command", "arguments": '{"cmd":"pwd"}'}
    chunks_of(body)


def test_parallel_calls_keep_their_index_and_arrive_whole_through_the_sdk():
    calls = [function_call("exec_command", json.dumps({"cmd": "ls %d" % n}), "call_%d" % n, "fc_%d" % n)
             for n in range(3)]
    body = stream(reasoning(summary=["Three at once."]), *calls, deltas=4)
    completion = completion_of(body)
    assert [(call["id"], json.loads(call["function"]["arguments"])["cmd"])
            for call in completion["choices"][0]["message"]["tool_calls"]] == [
        ("call_0", "ls 0"), ("call_1", "ls 1"), ("call_2", "ls 2")]
    chunks = chunks_of(body)
    pieces = deltas(chunks, "tool_calls")
    assert [(piece[0]["index"], "id" in piece[0]) for piece in pieces] == [
        (0, True), (0, False), (1, True), (1, False), (2, True), (2, False)]
    state = ChatCompletionStreamState(input_tools=TOOLS)
    for chunk in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    final = state.get_final_completion().choices[0].message.tool_calls
    assert [(call.id, call.function.name, json.loads(call.function.arguments)) for call in final] == [
        ("call_%d" % n, "exec_command", {"cmd": "ls %d" % n}) for n in range(3)]


def test_a_preamble_then_calls_is_one_choice():
    body = stream(message("I'll list the files."), function_call("exec_command", '{"cmd":"ls"}', "call_a", "fc_a"),
                  function_call("read_file", '{"path":"a"}', "call_b", "fc_b"))
    (choice,) = completion_of(body)["choices"]
    assert choice["message"]["content"] == "I'll list the files." and choice["finish_reason"] == "tool_calls"
    assert [call["id"] for call in choice["message"]["tool_calls"]] == ["call_a", "call_b"]
    assert all(choice["index"] == 0 for chunk in chunks_of(body) for choice in chunk["choices"])


def test_a_call_without_arguments_or_call_id():
    item = {"type": "function_call", "id": "fc_1", "name": "list_files", "arguments": "", "status": "completed"}
    (call,) = completion_of(stream(item, args_done=False))["choices"][0]["message"]["tool_calls"]
    assert call == {"id": "call_%s_0" % IDS, "type": "function", "function": {"name": "list_files", "arguments": "{}"}}


def test_a_custom_tool_call_goes_as_a_function_with_its_input():
    """Chat clients offer no freeform tools (responses_request refuses them); if one comes anyway, it
    comes in chat_answer's form for them, which every chat client can read."""
    patch = "*** Begin Patch\n*** Add File: g.txt\n+hello \"x\"\n*** End Patch\n"
    item = {"type": "custom_tool_call", "id": "ctc_1", "call_id": "call_p", "name": "apply_patch", "input": patch,
            "status": "completed"}
    for body in (stream(item), stream(item, args_in_item=False, terminal_output=False)):  # input in its done event
        (call,) = completion_of(body)["choices"][0]["message"]["tool_calls"]
        assert (call["id"], call["type"], call["function"]["name"]) == ("call_p", "function", "apply_patch")
        assert json.loads(call["function"]["arguments"]) == {"input": patch}
        chunks_of(body)


def test_a_call_of_a_tool_the_client_did_not_offer_is_passed_on():
    """plan.tool_names is not a filter: the client sees the model's call, as it would from the Chat API's
    gateway, and answers it as an unknown tool; dropping it would hide the turn's only action."""
    body = stream(function_call("delete_everything", "{}"))
    assert "delete_everything" not in PLAN.tool_names
    (call,) = completion_of(body)["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "delete_everything"


@pytest.mark.parametrize("capture", sorted(path.name for path in CAPTURES.glob("*.json")))
def test_captured_answers(capture):
    """The output items of the captured Codex turns (reasoning with summary and text, function calls,
    namespaced and custom calls, messages), streamed as the API streams them, with and without the
    terminal's output."""
    for items in json.loads((CAPTURES / capture).read_text())["answers"]:
        for terminal_output in (True, False):
            body = stream(*items, terminal_output=terminal_output)
            message_ = completion_of(body)["choices"][0]["message"]
            chunks_of(body)
            calls = [item for item in items if item["type"] in ("function_call", "custom_tool_call")]
            assert [call["id"] for call in message_.get("tool_calls") or ()] == [item["call_id"] for item in calls]
            for call, item in zip(message_.get("tool_calls") or (), calls):
                expected = item.get("arguments") or json.dumps({"input": item.get("input")})
                assert json.loads(call["function"]["arguments"]) == json.loads(expected)
            texts = [part["text"] for item in items if item["type"] == "reasoning" for part in item["content"]]
            assert message_.get("reasoning_content") == ("\n\n".join(texts) or None)


def test_hosted_tool_items_have_no_chat_form():
    search = {"type": "web_search_call", "id": "ws_1", "status": "completed",
              "action": {"type": "search", "query": "x"}}
    completion = completion_of(stream(search, message("Found it.")))
    assert "tool_calls" not in completion["choices"][0]["message"]
    assert completion["choices"][0]["finish_reason"] == "stop"


# ---------------------------------------------------------------------------
# Endings and usage
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("reason, finish", [("max_output_tokens", "length"), ("content_filter", "content_filter"),
                                            ("max_messages", "length"), (None, "length")])
def test_incomplete_answers(reason, finish):
    body = stream(message("Once upon a"), status="incomplete", reason=reason)
    assert completion_of(body)["choices"][0]["finish_reason"] == finish
    assert chunks_of(body, plan=QUIET)[-1]["choices"][0]["finish_reason"] == finish


def test_a_call_cut_by_max_output_tokens_stays_with_finish_reason_length():
    body = stream(function_call("exec_command", '{"cmd":"l'), status="incomplete", reason="max_output_tokens")
    choice = completion_of(body)["choices"][0]
    assert choice["finish_reason"] == "length" and choice["message"]["tool_calls"][0]["function"]["arguments"] == (
        '{"cmd":"l')


def test_usage_with_cached_and_reasoning_details():
    usage = completion_of(stream(message("x")))["usage"]
    assert usage == {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
                     "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
                     "completion_tokens_details": {"reasoning_tokens": 256, "audio_tokens": 0,
                                                   "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
    assert chunks_of(stream(message("x")))[-1]["usage"] == usage


def test_no_usage_from_the_upstream_is_zeros_not_null():
    completion = completion_of(stream(message("x"), usage=None))
    assert (completion["usage"]["prompt_tokens"], completion["usage"]["total_tokens"]) == (0, 0)
    partial = completion_of(stream(message("x"), usage={"input_tokens": 7, "output_tokens": 3}))["usage"]
    assert partial["total_tokens"] == 10 and partial["prompt_tokens_details"]["cached_tokens"] == 0


def test_model_is_the_upstreams_else_the_planned_one():
    assert completion_of(stream(message("x"), model=""))["model"] == "gpt-5-codex"
    assert completion_of(stream(message("x"), model="gpt-5-codex-2025-09-15"))["model"] == "gpt-5-codex-2025-09-15"


def test_failed_with_a_final_code_is_a_chat_error():
    error = {"code": "context_length_exceeded", "message": "Your input exceeds the context window."}
    body = stream(message("partial"), function_call("exec_command", "{}"), status="failed", error=error)
    response = answer(body)
    assert failed_error(response) == {"error": {"message": "Your input exceeds the context window.",
                                                "type": "invalid_request_error", "code": "context_length_exceeded",
                                                "param": None}}
    assert "tool_calls" not in chat_completion(response, PLAN, IDS, CREATED)["choices"][0]["message"]
    quota = answer(stream(status="failed", error={"code": "insufficient_quota", "message": "Quota."}))
    assert failed_error(quota)["error"]["type"] == "insufficient_quota"
    bare = dict(response, error=None)
    assert failed_error(bare) == {"error": {"message": "the upstream answer failed", "type": "server_error",
                                            "code": None, "param": None}}
    assert failed_error(answer(stream(message("x")))) is None
    assert failed_error(answer(stream(message("x"), status="incomplete", reason="content_filter"))) is None


# ---------------------------------------------------------------------------
# Recovering the output from the stream
# ---------------------------------------------------------------------------


def test_completed_with_empty_output_keeps_the_streamed_items():
    items = (reasoning(summary=["Think."]), message("Let me look."), function_call("exec_command", '{"cmd":"ls"}'))
    full, empty = stream(*items), stream(*items, terminal_output=False)
    assert json.loads(empty.rsplit(b"data: ", 1)[1])["response"]["output"] == []
    assert answer(empty)["output"] == answer(full)["output"] == list(items)
    assert completion_of(empty) == completion_of(full)


def test_items_never_finished_are_built_from_their_done_events():
    items = (reasoning(summary=["Think."], content=["Deep."]), message("Hello"),
             function_call("exec_command", '{"cmd":"ls"}'))
    body = stream(*items, item_done=False, terminal_output=False)
    assert b"output_item.done" not in body
    message_ = completion_of(body)["choices"][0]["message"]
    assert (message_["reasoning_content"], message_["content"]) == ("Deep.", "Hello")
    assert message_["tool_calls"][0]["function"]["arguments"] == '{"cmd":"ls"}'


def test_items_are_in_output_index_order_and_the_done_item_wins():
    body = stream(message("first", id="msg_1"), message("second", id="msg_2"))
    body = body.replace(b'"text":"second","annotations"', b'"text":"SECOND","annotations"', 1)  # the done item's
    assert [item["id"] for item in answer(body)["output"]] == ["msg_1", "msg_2"]


@pytest.mark.parametrize("variant", ["no event lines", "type last", "CRLF", "data: without space", "comments",
                                     "event line spaces"])
def test_framings_give_the_same_answer(variant):
    items = (reasoning(summary=["r"]), message("Hé llo"), function_call("exec_command", '{"a":1}'))
    plain = stream(*items, terminal_output=False, args_in_item=False)
    body = {
        "no event lines": lambda: stream(*items, terminal_output=False, args_in_item=False, event_lines=False),
        "type last": lambda: stream(*items, terminal_output=False, args_in_item=False, event_lines=False,
                                    type_last=True),
        "CRLF": lambda: plain.replace(b"\n", b"\r\n"),
        "data: without space": lambda: plain.replace(b"data: ", b"data:"),
        "comments": lambda: b": keep-alive\n\n" + plain.replace(b"\n\nevent:", b"\n\n: ping\n\nevent:"),
        "event line spaces": lambda: plain.replace(b"event: ", b"event:   "),
    }[variant]()
    assert answer(body) == answer(plain)
    assert chat_chunks(answer(body), PLAN, IDS, CREATED) == chat_chunks(answer(plain), PLAN, IDS, CREATED)


def test_text_that_names_events_is_not_an_event():
    tricky = ('event: response.output_item.done\ndata: {"type":"response.output_item.done","output_index":0,'
              '"item":{"type":"message"}} and "response.function_call_arguments.done"')
    body = stream(message(tricky), function_call("f", '{"q":"response.output_item.done"}'), args_in_item=False,
                  event_lines=False)
    message_ = completion_of(body)["choices"][0]["message"]
    assert message_["content"] == tricky and message_["tool_calls"][0]["function"]["arguments"] == (
        '{"q":"response.output_item.done"}')


def test_without_a_terminal_span_the_last_terminal_event_is_used():
    body = stream(message("x"), status="incomplete", reason="max_output_tokens")
    assert responses_answer(body, None) == answer(body)


def test_an_error_event_without_terminal_is_a_failed_answer():
    body = stream(message("x"))
    body = body[:body.index(b"event: response.completed")] + (
        b'event: error\ndata: {"type":"error","sequence_number":9,"code":"invalid_prompt",'
        b'"message":"Flagged.","param":null}\n\n')
    inspector = StreamInspector("responses")
    inspector.feed(body)
    assert inspector.verdict().outcome == StreamVerdict.FAILED and inspector.verdict().terminal is None
    response = responses_answer(body, None)
    assert failed_error(response)["error"] == {"message": "Flagged.", "type": "invalid_request_error",
                                               "code": "invalid_prompt", "param": None}


def test_a_broken_terminal_is_a_failed_answer():
    body = stream(message("x"))
    start, end = judged(body)
    broken = body[:start] + b" {]" + body[end:]
    assert failed_error(responses_answer(broken, (start, start + 3)))["error"]["code"] == "server_error"


# ---------------------------------------------------------------------------
# The real SDK client on these bytes (mock transport, strict validation)
# ---------------------------------------------------------------------------


def test_sdk_client_streams_a_tool_call_with_its_arguments_whole():
    body = stream(message("Checking."), function_call("exec_command", '{"cmd":"ls -la /tmp"}'), deltas=6)
    client = sdk_client(chat_chunks(answer(body), PLAN, IDS, CREATED))
    chunks = list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 1024
    with client.chat.completions.stream(model="m", messages=[{"role": "user", "content": "hi"}],
                                        tools=TOOLS) as events:
        kinds = [event.type for event in events]
        final = events.get_final_completion()
    assert "tool_calls.function.arguments.done" in kinds and "content.done" in kinds
    (call,) = final.choices[0].message.tool_calls
    assert (call.id, call.function.name, call.function.arguments) == ("call_1", "exec_command",
                                                                      '{"cmd":"ls -la /tmp"}')
    assert final.choices[0].message.content == "Checking." and final.choices[0].finish_reason == "tool_calls"


def test_sdk_client_reads_the_completion():
    body = stream(reasoning(summary=["hm"]), message("plain"))
    client = sdk_client(json.dumps(chat_completion(answer(body), PLAN, IDS, CREATED)).encode(), "application/json")
    completion = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content == "plain" and completion.usage.total_tokens == 1500
    assert completion.choices[0].message.reasoning_content == "hm"  # an extra field the SDK keeps


# ---------------------------------------------------------------------------
# Purity and cost
# ---------------------------------------------------------------------------


def test_same_input_same_bytes():
    body = stream(reasoning(summary=["r"]), message("a"), function_call("exec_command", "{}"))
    response = responses_answer(body, judged(body))
    again = responses_answer(memoryview(bytearray(body)), judged(body))
    assert response == again
    first = chat_chunks(response, PLAN, IDS, CREATED)
    assert chat_chunks(again, PLAN, IDS, CREATED) == first
    assert json.dumps(chat_completion(response, PLAN, IDS, CREATED)) == json.dumps(
        chat_completion(again, PLAN, IDS, CREATED))
    other = chat_chunks(response, PLAN, "f" * 32, CREATED)
    assert other.replace(b"f" * 32, IDS.encode()) == first  # only the ids differ
    assert response == responses_answer(body, judged(body))  # nothing was changed in place


def big_answer(pieces):
    """A Responses stream of ``pieces`` text deltas, then as many argument deltas of one call."""
    words = ["lorem ipsum dolor sit amet, ", 'consectetur "error" ', "日本語のテキスト ",
             '"type":"response.output_item.done" ']
    text = "".join(words[n % 4] for n in range(pieces))
    arguments = json.dumps({"text": "abc def " * pieces})
    return stream(reasoning(summary=["Think."]), message(text), function_call("exec_command", arguments),
                  deltas=pieces)


def translation_cpu(body):
    terminal = judged(body)
    started = time.process_time()
    response = responses_answer(body, terminal)
    chat_chunks(response, PLAN, IDS, CREATED)
    chat_completion(response, PLAN, IDS, CREATED)
    return time.process_time() - started


def test_translation_cost_is_linear():
    """4x the answer costs less than 6x the CPU; anything quadratic would cost about 16x."""
    small, large = big_answer(2500), big_answer(10000)
    assert 3.9 < len(large) / len(small) < 4.1
    assert_cost_is_linear(translation_cpu, small, large)


def test_delta_events_are_not_parsed(monkeypatch):
    """Only the events the answer needs are parsed: a few, however many deltas the stream has."""
    import retry_shield.responses_reading as module

    body = big_answer(2000)
    terminal = judged(body)
    parsed = []
    real = json.loads
    monkeypatch.setattr(module.json, "loads", lambda text, *a, **k: parsed.append(len(text)) or real(text, *a, **k))
    responses_answer(body, terminal)
    assert len(parsed) == 4  # three output_item.done and the terminal event
