"""Chat Completions answers turned into Responses objects and events: pure, checked with the openai SDK's own types.

The chat streams are built here, whole (the proxy translates only an answer it has judged
complete), shaped like the real servers' (compact JSON, UTF-8 on the wire). Every response
and every event stream is checked with the SDK's pydantic models and fed to its real SSE
decoder, stream accumulator and client (over a mock transport: no sockets).
"""

import json
import time
import typing

import httpx2
import pytest
from openai import OpenAI, omit
from openai._streaming import SSEDecoder
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseError, ResponseStreamEvent
from pydantic import TypeAdapter

from retry_shield.aggregate import assemble_chat_completion
from retry_shield.chat_answer import chat_to_response, response_events
from retry_shield.chat_request import ChatPlan
from tests.helpers import assert_cost_is_linear

COMPACT = (",", ":")
IDS = "0123456789abcdef0123456789abcdef"
CREATED = 1700000100
MODEL = "gpt-4.1-2025-04-14"
EVENT = TypeAdapter(ResponseStreamEvent)
WIRE_FIELDS = {field.alias or name for name, field in Response.model_fields.items()}
SDK_ERROR_CODES = set(typing.get_args(ResponseError.model_fields["code"].annotation))

PLAN = ChatPlan(model="gpt-4.1", custom_tools=frozenset(), namespaced={}, call_ids=frozenset(), echo={})
CODEX_TOOLS = [
    {"type": "function", "name": "exec_command", "description": "Runs a command.", "strict": False,
     "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}},
    {"type": "custom", "name": "apply_patch", "description": "Edits files.",
     "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/s"}},
    {"type": "namespace", "name": "multi_agent_v1", "description": "Agents.",
     "tools": [{"type": "function", "name": "spawn", "description": "Starts an agent.",
                "parameters": {"type": "object", "properties": {"task": {"type": "string"}}}}]},
]
CODEX_PLAN = ChatPlan(
    model="deepseek-chat", custom_tools=frozenset({"apply_patch"}),
    namespaced={"multi_agent_v1__spawn": ("multi_agent_v1", "spawn")}, call_ids=frozenset({"call_0", "call_1"}),
    echo={"instructions": None, "tools": CODEX_TOOLS, "tool_choice": "auto", "parallel_tool_calls": True,
          "reasoning": {"summary": "auto"}, "store": False, "prompt_cache_key": "session-1", "text": None})


# ---------------------------------------------------------------------------
# Chat stream builders
# ---------------------------------------------------------------------------


def encode(data):
    return json.dumps(data, separators=COMPACT, ensure_ascii=False).encode("utf-8")


CHAT_USAGE = {"prompt_tokens": 900, "completion_tokens": 40, "total_tokens": 940,
              "prompt_tokens_details": {"cached_tokens": 512, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 25, "audio_tokens": 0}}


def chunk(delta=None, finish=None, usage=None, choices=True, index=0, logprobs=None, model=MODEL):
    data = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000, "model": model,
            "service_tier": "default", "system_fingerprint": "fp_1",
            "choices": [{"index": index, "delta": delta or {}, "logprobs": logprobs, "finish_reason": finish}]
            if choices else []}
    if usage is not None:
        data["usage"] = usage
    return b"data: " + encode(data) + b"\n\n"


def chat(*chunks, finish="stop", usage=CHAT_USAGE, first=None):
    """A whole chat stream: the role chunk, ``chunks``, the finish chunk, the usage chunk, [DONE]."""
    body = chunk(first if first is not None else {"role": "assistant", "content": ""}) + b"".join(chunks)
    if finish:
        body += chunk({}, finish=finish)
    if usage:
        body += chunk(choices=False, usage=usage)
    return body + b"data: [DONE]\n\n"


def texts(*deltas):
    return [chunk({"content": delta}) for delta in deltas]


def call(index, **fields):
    return chunk({"tool_calls": [dict(fields, index=index)]})


def chat_error(code, message="The server had an error.", kind="invalid_request_error"):
    return b"data: " + encode({"error": {"message": message, "type": kind, "param": None, "code": code}}) + b"\n\n"


# ---------------------------------------------------------------------------
# Checks with the SDK's types
# ---------------------------------------------------------------------------


def sdk_valid(response):
    """The SDK's model of ``response``: every wire field present, nothing it does not know of."""
    assert set(response) == WIRE_FIELDS
    error = response["error"]
    if error is not None and error["code"] not in SDK_ERROR_CODES:
        # The SDK lists fewer codes than servers send; the code is kept for Codex (see chat_answer).
        response = dict(response, error=dict(error, code="server_error"))
    return Response.model_validate(response)


def translate(body, plan=PLAN, status_hint=""):
    response = chat_to_response(body, plan, IDS, CREATED, status_hint)
    sdk_valid(response)
    check_events(response_events(response), response)
    return response


def decoded(stream):
    """(event name, data) of each event, through the SDK's own SSE decoder, in pieces of 7 bytes."""
    pieces = (stream[start:start + 7] for start in range(0, len(stream), 7))
    return [(sse.event, sse.json()) for sse in SSEDecoder().iter_bytes(pieces)]


def check_events(stream, response):
    """The event stream of ``response`` is what the API sends and what the SDK and Codex need."""
    assert stream.endswith(b"\n\n") and b"\r" not in stream
    events = decoded(stream)
    for number, (name, data) in enumerate(events):
        assert name == data["type"] and data["sequence_number"] == number
        if data["type"] != "response.failed" or data["response"]["error"]["code"] in SDK_ERROR_CODES:
            EVENT.validate_python(data)
        else:
            sdk_valid(data["response"])
    kinds = [data["type"] for _, data in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    for _, data in events[:2]:
        assert data["response"]["status"] == "in_progress" and data["response"]["output"] == []
        assert data["response"]["id"] == response["id"] and set(data["response"]) == WIRE_FIELDS
    terminal = {"completed": "response.completed", "incomplete": "response.incomplete", "failed": "response.failed"}
    assert kinds[-1] == terminal[response["status"]] and kinds.count(kinds[-1]) == 1
    assert events[-1][1]["response"] == json.loads(json.dumps(response))
    # Items one after another: added first, done (with the whole item) last, nothing of another between.
    position = 2
    for index, item in enumerate(response["output"]):
        mine = []
        while position < len(events) - 1 and events[position][1].get("output_index") == index:
            mine.append(events[position][1])
            position += 1
        assert mine[0]["type"] == "response.output_item.added" and mine[-1]["type"] == "response.output_item.done"
        assert mine[0]["item"]["id"] == item["id"] and mine[0]["item"]["status"] == "in_progress"
        assert mine[-1]["item"] == json.loads(json.dumps(item))
        assert all(event["item_id"] == item["id"] for event in mine[1:-1])
        check_parts(mine[1:-1])
    assert position == len(events) - 1, "an event outside its item"
    accumulate(events, response)


def check_parts(events):
    """Each content part is added before its deltas and done after them."""
    opened = set()
    for event in events:
        if event["type"] == "response.content_part.added":
            opened.add(event["content_index"])
        elif "content_index" in event:
            assert event["content_index"] in opened
        if event["type"] == "response.content_part.done":
            opened.discard(event["content_index"])
    assert not opened


def accumulate(events, response):
    """Feed the SDK's stream accumulator (what responses.stream() runs) and compare its final answer."""
    state = ResponseStreamState(input_tools=omit, text_format=omit)
    final = None
    for _, data in events:
        if data["type"] == "response.failed" and data["response"]["error"]["code"] not in SDK_ERROR_CODES:
            continue
        for event in state.handle_event(EVENT.validate_python(data)):
            if event.type == "response.completed":
                final = event.response
    if response["status"] == "completed":
        assert final is not None and final.id == response["id"]
        assert final.output_text == expected_text(response)


def expected_text(response):
    return "".join(part["text"] for item in response["output"] if item["type"] == "message"
                   for part in item["content"] if part["type"] == "output_text")


def sdk_client(body, content_type="text/event-stream"):
    def answer(request):
        return httpx2.Response(200, headers={"content-type": content_type}, content=body)

    return OpenAI(api_key="unused", base_url="http://shield.invalid/v1", max_retries=0,
                  http_client=httpx2.Client(transport=httpx2.MockTransport(answer)),
                  _strict_response_validation=True)


# ---------------------------------------------------------------------------
# Text, reasoning, refusal
# ---------------------------------------------------------------------------


def test_text_answer_is_a_complete_response_object():
    response = translate(chat(*texts("Hel", "lo", " world")))
    assert (response["id"], response["object"], response["created_at"], response["status"]) == (
        "resp_" + IDS, "response", CREATED, "completed")
    assert response["completed_at"] == CREATED and response["model"] == MODEL
    assert response["error"] is None and response["incomplete_details"] is None
    assert response["output"] == [{"type": "message", "id": "msg_%s_0" % IDS, "role": "assistant",
                                   "status": "completed", "content": [{"type": "output_text", "text": "Hello world",
                                                                       "annotations": [], "logprobs": []}]}]
    assert "output_text" not in response  # an SDK property, not a field on the wire
    assert sdk_valid(response).output_text == "Hello world"


def test_defaults_of_the_api_where_the_request_said_nothing():
    response = translate(chat(*texts("hi")))
    assert (response["tools"], response["tool_choice"], response["parallel_tool_calls"]) == ([], "auto", True)
    assert (response["temperature"], response["top_p"], response["truncation"]) == (1.0, 1.0, "disabled")
    assert response["metadata"] == {} and response["background"] is False and response["top_logprobs"] == 0
    assert response["text"] == {"format": {"type": "text"}, "verbosity": "medium"}
    assert response["reasoning"] == {"effort": None, "summary": None}
    assert response["instructions"] is None and response["service_tier"] == "default"
    for field in ("conversation", "moderation", "tool_usage", "access_programs", "prompt_cache_diagnostics",
                  "input_transformations", "previous_response_id", "max_output_tokens", "user"):
        assert response[field] is None


def test_request_fields_are_echoed():
    echo = {"instructions": "Be brief.", "tools": CODEX_TOOLS, "tool_choice": "required", "parallel_tool_calls": False,
            "temperature": 0.2, "top_p": 0.9, "max_output_tokens": 500, "metadata": {"k": "v"},
            "reasoning": {"effort": "high"}, "text": {"verbosity": "low"}, "prompt_cache_key": "s1",
            "truncation": "auto", "user": "u1", "safety_identifier": "h1", "top_logprobs": 3, "store": False}
    response = translate(chat(*texts("ok")), plan=PLAN._replace(echo=echo))
    for field in ("instructions", "tools", "tool_choice", "parallel_tool_calls", "temperature", "top_p",
                  "max_output_tokens", "metadata", "prompt_cache_key", "truncation", "user", "safety_identifier",
                  "top_logprobs"):
        assert response[field] == echo[field], field
    assert response["reasoning"] == {"effort": "high", "summary": None}  # filled in, as the API does
    assert response["text"] == {"format": {"type": "text"}, "verbosity": "low"}
    assert "store" not in response  # not a field of the SDK's Response


def test_model_is_the_upstreams_else_the_requested_one():
    assert translate(chat(*texts("x")))["model"] == MODEL
    body = chat(*texts("x")).replace(b'"model":"%s"' % MODEL.encode(), b'"model":""')
    assert translate(body)["model"] == "gpt-4.1"


def test_multibyte_text_split_over_deltas():
    deltas = ("Grüße ", "日本", "語 ", "👩‍💻", " e\u0301", "\u2028", "\"quoted\" \\ ")
    response = translate(chat(*texts(*deltas)))
    assert expected_text(response) == "".join(deltas)
    stream = response_events(response)
    assert "👩‍💻".encode("utf-8") in stream and "日本語".encode("utf-8") in stream  # UTF-8, not escapes
    delta = [data for _, data in decoded(stream) if data["type"] == "response.output_text.delta"]
    assert [event["delta"] for event in delta] == ["".join(deltas)]


def test_a_lone_surrogate_goes_out_as_an_escape():
    body = chat(b'data: {"choices":[{"index":0,"delta":{"content":"bad \\ud83d end"}}]}\n\n')
    response = chat_to_response(body, PLAN, IDS, CREATED)
    stream = response_events(response)
    stream.decode("utf-8")
    assert b"\\ud83d" in stream
    assert decoded(stream)[-1][1]["response"]["output"][0]["content"][0]["text"] == "bad \ud83d end"


def test_reasoning_content_becomes_a_reasoning_item_before_the_message():
    body = chat(chunk({"reasoning_content": "Let me "}), chunk({"reasoning_content": "think."}),
                chunk({"reasoning_content": None, "content": "Done"}), first={"role": "assistant", "content": None})
    response = translate(body)
    reasoning, message = response["output"]
    assert reasoning == {"type": "reasoning", "id": "rs_%s_0" % IDS, "summary": [],
                         "content": [{"type": "reasoning_text", "text": "Let me think."}],
                         "encrypted_content": None, "status": "completed"}
    assert message["id"] == "msg_%s_1" % IDS and expected_text(response) == "Done"
    kinds = [data["type"] for _, data in decoded(response_events(response))]
    assert kinds[2:9] == ["response.output_item.added", "response.content_part.added",
                          "response.reasoning_text.delta", "response.reasoning_text.done",
                          "response.content_part.done", "response.output_item.done", "response.output_item.added"]


def test_reasoning_field_and_both_fields_at_once():
    openrouter = chat(chunk({"reasoning": "a"}), chunk({"reasoning": "b"}), *texts("x"))
    assert translate(openrouter)["output"][0]["content"][0]["text"] == "ab"
    both = chat(chunk({"reasoning_content": "a", "reasoning": "a"}),
                chunk({"reasoning_content": "b", "reasoning": "b"}))
    response = translate(both)
    assert [item["type"] for item in response["output"]] == ["reasoning"]
    assert response["output"][0]["content"][0]["text"] == "ab"


def test_reasoning_content_is_kept_for_chat_clients_only_when_streamed():
    (plain,) = assemble_chat_completion(chat(*texts("x")))["choices"]
    assert "reasoning_content" not in plain["message"]
    (thought,) = assemble_chat_completion(chat(chunk({"reasoning_content": "hm"}), *texts("x")))["choices"]
    assert thought["message"]["reasoning_content"] == "hm"


def test_refusal_is_a_refusal_part():
    body = chat(chunk({"refusal": "I can"}), chunk({"refusal": "'t help."}),
                first={"role": "assistant", "content": None, "refusal": ""})
    response = translate(body)
    (message,) = response["output"]
    assert message["content"] == [{"type": "refusal", "refusal": "I can't help."}]
    kinds = [data["type"] for _, data in decoded(response_events(response))]
    assert "response.refusal.delta" in kinds and "response.refusal.done" in kinds


def test_logprobs_are_carried_when_the_upstream_sent_them():
    def token(text):
        return {"token": text, "logprob": -0.25, "bytes": list(text.encode()),
                "top_logprobs": [{"token": text, "logprob": -0.25, "bytes": list(text.encode())}]}

    body = chat(chunk({"content": "Hi"}, logprobs={"content": [token("Hi")], "refusal": None}))
    response = translate(body)
    assert response["output"][0]["content"][0]["logprobs"] == [token("Hi")]
    (delta,) = [data for _, data in decoded(response_events(response)) if data["type"] == "response.output_text.delta"]
    assert delta["logprobs"] == [{"token": "Hi", "logprob": -0.25, "top_logprobs": [{"token": "Hi", "logprob": -0.25}]}]


def test_empty_answer_has_no_items():
    response = translate(chat())
    assert response["status"] == "completed" and response["output"] == []


# ---------------------------------------------------------------------------
# Endings and usage
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("finish, reason", [("length", "max_output_tokens"), ("content_filter", "content_filter")])
def test_cut_off_answers_are_incomplete(finish, reason):
    response = translate(chat(*texts("Once upon"), finish=finish))
    assert response["status"] == "incomplete" and response["incomplete_details"] == {"reason": reason}
    assert response["completed_at"] is None and response["output"][-1]["status"] == "incomplete"
    assert decoded(response_events(response))[-1][0] == "response.incomplete"


@pytest.mark.parametrize("finish", ["stop", "tool_calls", "function_call", "end_turn"])
def test_other_finish_reasons_complete(finish):
    assert translate(chat(*texts("x"), finish=finish))["status"] == "completed"


def test_usage_in_responses_terms():
    usage = translate(chat(*texts("x")))["usage"]
    assert usage == {"input_tokens": 900, "input_tokens_details": {"cached_tokens": 512, "cache_write_tokens": 0},
                     "output_tokens": 40, "output_tokens_details": {"reasoning_tokens": 25}, "total_tokens": 940}


def test_usage_details_absent_are_zeros_and_totals_are_summed():
    response = translate(chat(*texts("x"), usage={"prompt_tokens": 7, "completion_tokens": 3}))
    assert response["usage"] == {"input_tokens": 7,
                                 "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                                 "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 0},
                                 "total_tokens": 10}
    deepseek = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10, "prompt_cache_hit_tokens": 4,
                "prompt_cache_miss_tokens": 3, "completion_tokens_details": {"reasoning_tokens": 2}}
    usage = translate(chat(*texts("x"), usage=deepseek))["usage"]
    assert usage["input_tokens_details"]["cached_tokens"] == 4
    assert usage["output_tokens_details"]["reasoning_tokens"] == 2


def test_no_usage_from_the_upstream_is_null_not_zeros():
    response = translate(chat(*texts("x"), usage=None))
    assert response["usage"] is None


def test_final_error_line_is_a_failed_response_without_items():
    body = chat(*texts("partial"), call(0, id="call_x", type="function",
                                         function={"name": "exec_command", "arguments": '{"cmd":"rm -rf /tmp/x"}'}),
                finish=None, usage=None)
    body = body.replace(b"data: [DONE]", chat_error("invalid_prompt", "Your prompt was flagged.") + b"data: [DONE]")
    response = translate(body)
    assert response["status"] == "failed" and response["output"] == []  # Codex would run the call
    assert response["error"] == {"code": "invalid_prompt", "message": "Your prompt was flagged."}
    assert response["completed_at"] is None and response["incomplete_details"] is None
    assert [name for name, _ in decoded(response_events(response))] == [
        "response.created", "response.in_progress", "response.failed"]


def test_error_codes_the_sdk_does_not_list_are_kept_for_codex():
    response = translate(chat_error("context_length_exceeded", "Too long.") + b"data: [DONE]\n\n")
    assert response["error"] == {"code": "context_length_exceeded", "message": "Too long."}
    nameless = translate(b'data: {"error":{"message":"boom","type":"server_error","code":null}}\n\ndata: [DONE]\n\n')
    assert nameless["error"] == {"code": "server_error", "message": "boom"}
    numbered = translate(b'data: {"error":{"message":"slow down","code":429}}\n\n')
    assert numbered["error"]["code"] == "429"
    flat = translate(b'data: {"type":"error","code":"invalid_prompt","message":"no"}\n\n')
    assert flat["error"] == {"code": "invalid_prompt", "message": "no"}


def test_text_that_names_error_is_not_an_error():
    response = translate(chat(*texts('the "error": {"code": "x"} field', ' and "error"')))
    assert response["status"] == "completed" and response["error"] is None


def test_failed_hint_without_an_error_line():
    response = translate(chat(*texts("x")), status_hint="failed")
    assert response["status"] == "failed" and response["error"]["code"] == "server_error"
    assert translate(chat(*texts("x")), status_hint="complete")["status"] == "completed"


# ---------------------------------------------------------------------------
# Tool calls
# ---------------------------------------------------------------------------


def function_calls(response):
    return [(item["call_id"], item["name"], json.loads(item["arguments"]))
            for item in response["output"] if item["type"] == "function_call"]


def test_parallel_tool_calls_split_interleaved_and_reassembled():
    body = chat(call(0, id="call_a", type="function", function={"name": "exec_command", "arguments": ""}),
                call(1, id="call_b", type="function", function={"name": "exec_command"}),
                call(0, function={"arguments": '{"cm'}), call(1, function={"arguments": '{"cmd":'}),
                call(0, function={"arguments": 'd": "ls'}), call(1, function={"arguments": ' "pwd"}'}),
                call(0, function={"arguments": ' -l"}'}),
                first={"role": "assistant", "content": None}, finish="tool_calls")
    response = translate(body)
    assert [item["type"] for item in response["output"]] == ["function_call", "function_call"]
    assert function_calls(response) == [("call_a", "exec_command", {"cmd": "ls -l"}),
                                        ("call_b", "exec_command", {"cmd": "pwd"})]
    first = response["output"][0]
    assert first == {"type": "function_call", "id": "fc_%s_0" % IDS, "call_id": "call_a", "name": "exec_command",
                     "arguments": '{"cmd": "ls -l"}', "status": "completed"}
    args = [data for _, data in decoded(response_events(response))
            if data["type"].startswith("response.function_call_arguments")]
    assert [(event["type"][-5:], event["output_index"]) for event in args] == [
        ("delta", 0), (".done", 0), ("delta", 1), (".done", 1)]


def test_empty_content_beside_tool_calls_gives_no_message():
    for content in ("", "\n\n"):
        body = chat(chunk({"content": content}),
                    call(0, id="call_a", type="function", function={"name": "f", "arguments": "{}"}),
                    finish="tool_calls")
        assert [item["type"] for item in translate(body)["output"]] == ["function_call"]


def test_text_then_tool_call():
    body = chat(*texts("Let me look."),
                call(0, id="call_a", type="function", function={"name": "f", "arguments": "{}"}), finish="tool_calls")
    response = translate(body)
    assert [item["type"] for item in response["output"]] == ["message", "function_call"]
    assert response["output"][1]["id"] == "fc_%s_1" % IDS


def test_call_without_arguments_gets_an_empty_object():
    body = chat(call(0, id="call_a", type="function", function={"name": "list_files"}), finish="tool_calls")
    assert translate(body)["output"][0]["arguments"] == "{}"


def test_arguments_sent_as_an_object():
    body = chat(call(0, id="call_a", type="function", function={"name": "f", "arguments": {"a": [1, "é"]}}),
                finish="tool_calls")
    assert function_calls(translate(body)) == [("call_a", "f", {"a": [1, "é"]})]


def test_tool_call_deltas_without_index():
    def bare(**fields):
        return chunk({"tool_calls": [fields]})

    body = chat(bare(id="call_a", type="function", function={"name": "f", "arguments": '{"n":'}),
                bare(function={"arguments": "1}"}),
                bare(id="call_b", type="function", function={"name": "g", "arguments": '{"n":2}'}),
                chunk({"tool_calls": [  # two whole calls in one chunk, neither numbered
                    {"id": "call_c", "type": "function", "function": {"name": "h", "arguments": "{}"}},
                    {"id": "call_d", "type": "function", "function": {"name": "k", "arguments": "{}"}}]}),
                finish="tool_calls")
    assert function_calls(translate(body)) == [("call_a", "f", {"n": 1}), ("call_b", "g", {"n": 2}),
                                               ("call_c", "h", {}), ("call_d", "k", {})]


def test_custom_tool_call_gets_its_freeform_input():
    patch = "*** Begin Patch\n*** Add File: a.txt\n+héllo \"x\"\n*** End Patch\n"
    body = chat(call(0, id="call_p", type="function", function={"name": "apply_patch"}),
                call(0, function={"arguments": json.dumps({"input": patch})[:20]}),
                call(0, function={"arguments": json.dumps({"input": patch})[20:]}), finish="tool_calls")
    response = translate(body, plan=CODEX_PLAN)
    (item,) = response["output"]
    assert item == {"type": "custom_tool_call", "id": "ctc_%s_0" % IDS, "call_id": "call_p", "name": "apply_patch",
                    "input": patch, "status": "completed"}
    events = [data for _, data in decoded(response_events(response))]
    assert [event["type"] for event in events[3:5]] == ["response.custom_tool_call_input.delta",
                                                        "response.custom_tool_call_input.done"]
    assert events[4]["input"] == patch and events[2]["item"]["input"] == ""


def test_custom_tool_input_the_model_wrote_bare():
    body = chat(call(0, id="call_p", type="function", function={"name": "apply_patch", "arguments": "*** Begin Patch"}),
                finish="tool_calls")
    assert translate(body, plan=CODEX_PLAN)["output"][0]["input"] == "*** Begin Patch"
    quoted = chat(call(0, id="call_p", type="function", function={"name": "apply_patch", "arguments": '"text"'}),
                  finish="tool_calls")
    assert translate(quoted, plan=CODEX_PLAN)["output"][0]["input"] == "text"


def test_namespaced_call_gets_its_namespace_and_name_back():
    body = chat(call(0, id="call_n", type="function",
                     function={"name": "multi_agent_v1__spawn", "arguments": '{"task":"x"}'}), finish="tool_calls")
    (item,) = translate(body, plan=CODEX_PLAN)["output"]
    assert item == {"type": "function_call", "id": "fc_%s_0" % IDS, "call_id": "call_n", "name": "spawn",
                    "namespace": "multi_agent_v1", "arguments": '{"task":"x"}', "status": "completed"}


def test_namespaced_custom_tool():
    plan = CODEX_PLAN._replace(custom_tools=frozenset({"ns__edit"}), namespaced={"ns__edit": ("ns", "edit")})
    body = chat(call(0, id="call_e", type="function", function={"name": "ns__edit", "arguments": '{"input":"t"}'}),
                finish="tool_calls")
    (item,) = translate(body, plan=plan)["output"]
    assert (item["type"], item["name"], item["namespace"], item["input"]) == ("custom_tool_call", "edit", "ns", "t")


def test_call_ids_already_in_the_conversation_are_replaced():
    body = chat(call(0, id="call_0", type="function", function={"name": "f", "arguments": "{}"}),
                call(1, id="call_9", type="function", function={"name": "f", "arguments": "{}"}),
                call(2, id="call_9", type="function", function={"name": "f", "arguments": "{}"}),
                call(3, type="function", function={"name": "f", "arguments": "{}"}),
                call(4, id="call_1", type="function", function={"name": "apply_patch", "arguments": '{"input":"p"}'}),
                finish="tool_calls")
    response = translate(body, plan=CODEX_PLAN)
    assert [item["call_id"] for item in response["output"]] == [
        "call_%s_0" % IDS, "call_9", "call_%s_2" % IDS, "call_%s_3" % IDS, "call_%s_4" % IDS]


def test_codex_turn_with_reasoning_text_and_every_kind_of_call():
    body = chat(chunk({"reasoning_content": "Plan: patch, then run."}), *texts("On it."),
                call(0, id="call_0", type="function", function={"name": "apply_patch", "arguments": '{"input":"P"}'}),
                call(1, id="call_1", type="function", function={"name": "exec_command", "arguments": '{"cmd":"ls"}'}),
                call(2, id="call_2", type="function", function={"name": "multi_agent_v1__spawn", "arguments": "{}"}),
                finish="tool_calls")
    response = translate(body, plan=CODEX_PLAN)
    assert [(item["type"], item["id"]) for item in response["output"]] == [
        ("reasoning", "rs_%s_0" % IDS), ("message", "msg_%s_1" % IDS), ("custom_tool_call", "ctc_%s_2" % IDS),
        ("function_call", "fc_%s_3" % IDS), ("function_call", "fc_%s_4" % IDS)]
    assert response["tools"] == CODEX_TOOLS and response["prompt_cache_key"] == "session-1"
    assert response["reasoning"] == {"effort": None, "summary": "auto"}
    assert len({item["call_id"] for item in response["output"][2:]}) == 3


# ---------------------------------------------------------------------------
# Stream framing from various servers
# ---------------------------------------------------------------------------


AZURE_FILTER = (b'data: {"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":'
                b'[{"prompt_index":0,"content_filter_results":{"hate":{"filtered":false,"severity":"safe"}}}]}\n\n')


def framed(body):
    return {
        "Azure prompt filter chunk first": AZURE_FILTER + body,
        "SSE comments": b": keep-alive\n\n" + body.replace(b"\n\ndata:", b"\n\n: ping\n\ndata:"),
        "CRLF line ends": body.replace(b"\n", b"\r\n"),
        "data: without space": body.replace(b"data: ", b"data:"),
        "Azure trailing filter chunk": body.replace(
            b"data: [DONE]", b'data: {"choices":[{"index":0,"delta":{},"finish_reason":null,"content_filter_results":'
                             b'{}}],"created":0,"id":"","model":"","object":""}\n\ndata: [DONE]'),
    }


def test_framings_give_the_same_response():
    body = chat(chunk({"reasoning_content": "r"}), *texts("Hé", "llo"),
                call(0, id="call_a", type="function", function={"name": "f", "arguments": '{"a":'}),
                call(0, function={"arguments": "1}"}), finish="tool_calls")
    plain = chat_to_response(body, PLAN, IDS, CREATED)
    for name, variant in framed(body).items():
        assert translate(variant) == plain, name


# ---------------------------------------------------------------------------
# The real SDK client on these bytes (mock transport, strict validation)
# ---------------------------------------------------------------------------


def test_sdk_client_streams_the_events():
    body = chat(chunk({"reasoning_content": "hm"}), *texts("Hi ", "there"),
                call(0, id="call_a", type="function", function={"name": "f", "arguments": '{"a":1}'}),
                finish="tool_calls")
    stream = response_events(chat_to_response(body, PLAN, IDS, CREATED))
    client = sdk_client(stream)
    kinds = [event.type for event in client.responses.create(model="m", input="hi", stream=True)]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    with client.responses.stream(model="m", input="hi") as events:
        deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
        final = events.get_final_response()
    assert deltas == ["Hi there"] and final.output_text == "Hi there" and final.id == "resp_" + IDS
    assert [item.type for item in final.output] == ["reasoning", "message", "function_call"]
    assert final.usage.input_tokens_details.cached_tokens == 512


def test_sdk_client_reads_the_object_as_a_non_streaming_answer():
    response = chat_to_response(chat(*texts("plain")), PLAN, IDS, CREATED)
    client = sdk_client(json.dumps(response).encode(), "application/json")
    answer = client.responses.create(model="m", input="hi")
    assert answer.output_text == "plain" and answer.usage.total_tokens == 940


# ---------------------------------------------------------------------------
# Purity and cost
# ---------------------------------------------------------------------------


def test_same_input_same_bytes():
    body = chat(chunk({"reasoning_content": "r"}), *texts("a", "b"),
                call(0, id="call_0", type="function", function={"name": "exec_command", "arguments": "{}"}),
                finish="tool_calls")
    first = response_events(chat_to_response(body, CODEX_PLAN, IDS, CREATED))
    again = response_events(chat_to_response(memoryview(bytearray(body)), CODEX_PLAN, IDS, CREATED))
    assert first == again
    other = response_events(chat_to_response(body, CODEX_PLAN, "f" * 32, CREATED))
    assert other.replace(b"f" * 32, IDS.encode()) == first  # only the ids differ


def big_answer(deltas):
    """A chat stream with ``deltas`` text deltas, then as many argument pieces of one call."""
    words = ["lorem ipsum dolor sit amet, ", "consectetur \"error\" ", "日本語のテキスト ", "sed do eiusmod "]
    pieces = [chunk({"content": words[n % 4]}) for n in range(deltas)]
    pieces.append(call(0, id="call_a", type="function", function={"name": "f", "arguments": '{"text":"'}))
    pieces += [call(0, function={"arguments": "abc def "}) for _ in range(deltas)]
    pieces.append(call(0, function={"arguments": '"}'}))
    return chat(*pieces, finish="tool_calls")


def translation_cpu(body):
    started = time.process_time()
    response_events(chat_to_response(body, PLAN, IDS, CREATED))
    return time.process_time() - started


def test_translation_cost_is_linear():
    """4x the answer costs less than 6x the CPU; anything quadratic would cost about 16x."""
    small, large = big_answer(2500), big_answer(10000)
    assert 3.9 < len(large) / len(small) < 4.1
    assert_cost_is_linear(translation_cpu, small, large)
