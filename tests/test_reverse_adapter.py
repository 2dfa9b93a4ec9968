"""Issue 12 end to end: Chat Completions clients (http.client, the openai SDK) through the real proxy in front of a
Responses-only upstream. The proxy translates the request to the Responses API, shields it on the Responses
protocol and translates only the good attempt back, as a chat.completion.chunk stream or a chat.completion."""

import json
import logging

import openai
import pytest

from tests import responses_streams as rs
from tests.chat_streams import chat_answer
from tests.fake_upstream import FakeUpstream, cut, failed, raw, reset, status
from tests.helpers import post, request

TEXT = "The whole answer, every word of it, translated back."
CHAT = "/v1/chat/completions"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CLOCK = {"type": "function", "function": {
    "name": "get_time", "description": "Time in a zone.",
    "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}}
CALLS = [("call_w", "get_weather", '{"city": "Paris", "unit": "C"}'), ("call_t", "get_time", '{"tz": "Europe/Paris"}')]
CHAT_USAGE = {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
              "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 256, "audio_tokens": 0,
                                            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
ZERO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
              "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
CONTEXT = "Your input exceeds the context window of this model."


@pytest.fixture
def adapter(responses_upstream, make_proxy):
    """The proxy told that its upstream (a base URL) speaks only the Responses API."""
    return make_proxy(responses_upstream, UPSTREAM_API="responses")


def streamed(**fields):
    return dict({"model": "gpt-5-codex", "messages": [{"role": "user", "content": "hi"}], "stream": True}, **fields)


def unstreamed(**fields):
    return dict({"model": "gpt-5-codex", "messages": [{"role": "user", "content": "hi"}]}, **fields)


def chunks_of(body):
    """The chunks of a chat stream: only ``data:`` lines, each one chat.completion.chunk, then ``data: [DONE]``."""
    frames = body.decode("utf-8").split("\n\n")
    assert frames[-2:] == ["data: [DONE]", ""], body[-200:]
    chunks = []
    for frame in frames[:-2]:
        assert frame.startswith("data: ") and "\n" not in frame, frame
        chunk = json.loads(frame[len("data: "):])
        assert chunk["object"] == "chat.completion.chunk"
        chunks.append(chunk)
    assert len({chunk["id"] for chunk in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    return chunks


def deltas(chunks):
    return [chunk["choices"][0]["delta"] for chunk in chunks if chunk["choices"]]


def content_of(chunks):
    return "".join(delta.get("content") or "" for delta in deltas(chunks))


def finish_of(chunks):
    finishes = [chunk["choices"][0]["finish_reason"] for chunk in chunks if chunk["choices"]]
    assert all(finish is None for finish in finishes[:-1])  # one finish_reason, on the last choice chunk
    return finishes[-1]


def calls_of(chunks):
    """The tool calls a client accumulates, by index: id, type and name from the first delta, arguments joined."""
    calls = {}
    for delta in deltas(chunks):
        for call in delta.get("tool_calls") or ():
            if call["index"] not in calls:
                assert call["id"] and call["type"] == "function" and call["function"]["name"], call
                calls[call["index"]] = {"id": call["id"], "name": call["function"]["name"], "arguments": ""}
            else:
                assert "id" not in call and "name" not in call["function"], call  # only arguments after the first
            calls[call["index"]]["arguments"] += call["function"].get("arguments") or ""
    return calls


def user_input(text="hi"):
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


# -- 1. a streamed chat request ---------------------------------------------------------------------------------------


def test_streamed_chat_request_is_translated_both_ways(responses_upstream, adapter):
    responses_upstream.plan(raw(rs.answer(TEXT, deltas=5)))
    code, headers, body = post(adapter.port, CHAT, streamed(messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]))
    assert code == 200, body
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["content-length"] == str(len(body))
    sent = responses_upstream.requests[-1]
    assert (sent.method, sent.path) == ("POST", "/v1/responses")
    assert sent.json["instructions"] == "Be brief." and sent.json["input"] == [user_input()]
    assert sent.json["stream"] is True and sent.json["store"] is False and sent.json["model"] == "gpt-5-codex"
    assert "messages" not in sent.json and "stream_options" not in sent.json
    chunks = chunks_of(body)
    assert deltas(chunks)[0]["role"] == "assistant"
    assert all("role" not in delta for delta in deltas(chunks)[1:])
    assert content_of(chunks) == TEXT
    assert finish_of(chunks) == "stop"
    assert all(chunk["choices"] and chunk["choices"][0]["index"] == 0 for chunk in chunks)  # no usage chunk: not asked
    assert chunks[0]["model"] == rs.MODEL
    assert responses_upstream.attempts == 1


def test_each_request_gets_its_own_id(responses_upstream, adapter):
    responses_upstream.plan(raw(rs.answer(TEXT)))
    first = chunks_of(post(adapter.port, CHAT, streamed())[2])[0]["id"]
    second = chunks_of(post(adapter.port, CHAT, streamed())[2])[0]["id"]
    assert first != second


# -- 2. faults on the Responses side ----------------------------------------------------------------------------------


def test_responses_side_faults_are_absorbed_and_only_the_good_attempt_is_translated(responses_upstream, adapter):
    responses_upstream.plan(status(429), cut(1500), reset(), raw(rs.answer(TEXT)))
    code, _, body = post(adapter.port, CHAT, streamed())
    assert code == 200, body
    assert responses_upstream.attempts == 4
    assert all(seen.path == "/v1/responses" for seen in responses_upstream.requests)
    assert len(responses_upstream.sent) == 4 and b"response.output_text.delta" in responses_upstream.sent[1]
    assert b"response.completed" not in responses_upstream.sent[1]  # the cut attempt was partial
    chunks = chunks_of(body)
    assert content_of(chunks) == TEXT and finish_of(chunks) == "stop"
    assert [delta.get("role") for delta in deltas(chunks)].count("assistant") == 1  # one answer, not two
    assert b"Hello" not in body  # the cut attempt's text


def test_a_retryable_response_failed_is_retried_not_translated(responses_upstream, adapter):
    responses_upstream.plan(failed(code="server_error", message="The server had an error."), raw(rs.answer(TEXT)))
    code, _, body = post(adapter.port, CHAT, streamed())
    assert code == 200, body
    assert content_of(chunks_of(body)) == TEXT
    assert b"server had an error" not in body and responses_upstream.attempts == 2


def test_an_upstream_400_reaches_the_client_as_it_came(responses_upstream, adapter):
    refusal = {"error": {"message": "Invalid value for 'input'.", "type": "invalid_request_error",
                         "param": "input", "code": "invalid_value"}}
    responses_upstream.plan(status(400, body=refusal))
    for body in (streamed(), unstreamed()):
        responses_upstream.reset()
        code, headers, received = post(adapter.port, CHAT, body)
        assert (code, json.loads(received)) == (400, refusal) and headers["content-type"] == "application/json"
        assert responses_upstream.attempts == 1


def test_giving_up_keeps_the_upstreams_last_error(responses_upstream, make_proxy):
    shield = make_proxy(responses_upstream, UPSTREAM_API="responses", MAX_RETRIES="1")
    last = {"error": {"message": "second 503, the one to pass on", "type": "server_error", "code": "overloaded"}}
    responses_upstream.plan(status(503), status(503, body=last, headers={"Retry-After": "0"}))
    for body in (streamed(), unstreamed()):
        responses_upstream.reset()
        code, headers, received = post(shield.port, CHAT, body)
        assert code == 503 and json.loads(received) == last and headers["retry-after"] == "0"
        assert responses_upstream.attempts == 2


# -- 3. a non-streaming chat client -----------------------------------------------------------------------------------


def test_non_streaming_client_gets_a_chat_completion_with_usage(responses_upstream, adapter):
    responses_upstream.plan(status(503), raw(rs.answer(TEXT, thoughts=["Think first."])))
    code, headers, body = post(adapter.port, CHAT, unstreamed())
    assert code == 200, body
    assert headers["content-type"] == "application/json"
    completion = json.loads(body)
    assert completion["object"] == "chat.completion" and completion["id"].startswith("chatcmpl-")
    assert completion["model"] == rs.MODEL
    [choice] = completion["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"] == TEXT
    assert choice["message"]["reasoning_content"] == "Think first."
    assert "tool_calls" not in choice["message"]
    assert completion["usage"] == CHAT_USAGE
    assert responses_upstream.requests[-1].json["stream"] is True  # forced, for the shield to judge
    assert responses_upstream.attempts == 2


def test_usage_is_never_null(responses_upstream, adapter):
    """An upstream that reports no usage: zeros, as clients read completion.usage.prompt_tokens unchecked."""
    responses_upstream.plan(raw(rs.answer(TEXT, usage=None)))
    completion = json.loads(post(adapter.port, CHAT, unstreamed())[2])
    assert completion["usage"] == ZERO_USAGE
    chunks = chunks_of(post(adapter.port, CHAT, streamed(stream_options={"include_usage": True}))[2])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == ZERO_USAGE


def test_a_responses_upstream_that_does_not_stream_is_translated_too(responses_upstream, adapter):
    whole = rs.response(output=[rs.message(TEXT)])
    responses_upstream.plan(status(200, body=whole))
    for wants_stream in (True, False):
        code, _, body = post(adapter.port, CHAT, dict(unstreamed(), stream=wants_stream))
        assert code == 200, body
        if wants_stream:
            assert content_of(chunks_of(body)) == TEXT
        else:
            completion = json.loads(body)
            assert completion["choices"][0]["message"]["content"] == TEXT and completion["usage"] == CHAT_USAGE


# -- 4. tools ---------------------------------------------------------------------------------------------------------


def test_tools_reach_the_upstream_as_responses_function_tools(responses_upstream, adapter):
    responses_upstream.plan(raw(rs.answer(TEXT)))
    code, _, body = post(adapter.port, CHAT, streamed(tools=[WEATHER, CLOCK], tool_choice="auto",
                                                      parallel_tool_calls=True))
    assert code == 200, body
    sent = responses_upstream.requests[-1].json
    assert sent["tools"] == [
        {"type": "function", "name": "get_weather", "description": "Weather of a city.",
         "parameters": WEATHER["function"]["parameters"], "strict": False},
        {"type": "function", "name": "get_time", "description": "Time in a zone.",
         "parameters": CLOCK["function"]["parameters"], "strict": False}]
    assert sent["tool_choice"] == "auto" and sent["parallel_tool_calls"] is True
    named = {"type": "function", "function": {"name": "get_time"}}
    code, _, body = post(adapter.port, CHAT, streamed(tools=[WEATHER, CLOCK], tool_choice=named))
    assert code == 200, body
    assert responses_upstream.requests[-1].json["tool_choice"] == {"type": "function", "name": "get_time"}


def test_parallel_function_calls_come_back_as_tool_calls_with_stable_indexes(responses_upstream, adapter):
    responses_upstream.plan(raw(rs.answer("Let me look.", thoughts=["Two tools."], calls=CALLS, deltas=4)))
    code, _, body = post(adapter.port, CHAT, streamed(tools=[WEATHER, CLOCK]))
    assert code == 200, body
    chunks = chunks_of(body)
    assert all(chunk["choices"][0]["index"] == 0 for chunk in chunks)  # the preamble is no second choice
    assert content_of(chunks) == "Let me look."
    assert "".join(delta.get("reasoning_content") or "" for delta in deltas(chunks)) == "Two tools."
    assert calls_of(chunks) == {index: {"id": call_id, "name": name, "arguments": arguments}
                                for index, (call_id, name, arguments) in enumerate(CALLS)}
    assert finish_of(chunks) == "tool_calls"

    code, _, body = post(adapter.port, CHAT, unstreamed(tools=[WEATHER, CLOCK]))
    assert code == 200, body
    [choice] = json.loads(body)["choices"]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Let me look."
    assert choice["message"]["tool_calls"] == [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        for call_id, name, arguments in CALLS]


@pytest.mark.parametrize("where", ["arguments.done only", "output_item.done only"])
def test_arguments_from_either_done_event_come_back_whole(responses_upstream, adapter, where):
    only_in_done = where == "arguments.done only"
    responses_upstream.plan(raw(rs.answer(calls=CALLS, args_in_item=not only_in_done, args_done=only_in_done)))
    chunks = chunks_of(post(adapter.port, CHAT, streamed(tools=[WEATHER, CLOCK]))[2])
    assert [call["arguments"] for call in calls_of(chunks).values()] == [arguments for _, _, arguments in CALLS]
    assert finish_of(chunks) == "tool_calls"
    completion = json.loads(post(adapter.port, CHAT, unstreamed(tools=[WEATHER, CLOCK]))[2])
    assert [call["function"]["arguments"] for call in completion["choices"][0]["message"]["tool_calls"]] == [
        arguments for _, _, arguments in CALLS]


SHAPES = {"no event lines": {"event_lines": False}, "empty terminal output": {"terminal_output": False},
          "arguments only in output_item.done": {"terminal_output": False, "args_done": False}}


@pytest.mark.parametrize("shape", SHAPES)
def test_streams_of_other_servers_are_translated(responses_upstream, adapter, shape):
    """Some gateways send data lines only (each event named by its "type"); some end with an empty output,
    so that the items and their arguments are only in the events."""
    responses_upstream.plan(raw(rs.answer(TEXT, calls=CALLS[:1], **SHAPES[shape])))
    body = post(adapter.port, CHAT, streamed(tools=[WEATHER], stream_options={"include_usage": True}))[2]
    chunks = chunks_of(body)
    assert content_of(chunks) == TEXT and calls_of(chunks)[0]["arguments"] == CALLS[0][2]
    assert chunks[-1]["usage"] == CHAT_USAGE and responses_upstream.attempts == 1


def test_a_tool_round_trip_becomes_function_call_items(responses_upstream, adapter):
    responses_upstream.plan(raw(rs.answer("It is sunny.")))
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_w", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_w", "content": "sunny, 21 C"}]
    code, _, body = post(adapter.port, CHAT, streamed(messages=messages, tools=[WEATHER]))
    assert code == 200, body
    assert responses_upstream.requests[-1].json["input"] == [
        user_input("Weather in Paris?"),
        {"type": "function_call", "call_id": "call_w", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "call_w", "output": "sunny, 21 C"}]
    assert content_of(chunks_of(body)) == "It is sunny."


# -- 5. usage chunk, length, failures ---------------------------------------------------------------------------------


def test_include_usage_gives_a_final_usage_chunk(responses_upstream, adapter):
    responses_upstream.plan(raw(rs.answer(TEXT)))
    code, _, body = post(adapter.port, CHAT, streamed(stream_options={"include_usage": True}))
    assert code == 200, body
    chunks = chunks_of(body)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == CHAT_USAGE
    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    assert finish_of(chunks) == "stop" and content_of(chunks) == TEXT
    assert "stream_options" not in responses_upstream.requests[-1].json  # no such parameter in the Responses API


def test_response_incomplete_is_finish_reason_length(responses_upstream, adapter):
    responses_upstream.plan(raw(rs.incomplete("Cut off at the tok")))
    code, _, body = post(adapter.port, CHAT, streamed(max_tokens=16))
    assert code == 200, body
    assert responses_upstream.requests[-1].json["max_output_tokens"] == 16
    chunks = chunks_of(body)
    assert content_of(chunks) == "Cut off at the tok" and finish_of(chunks) == "length"
    code, _, body = post(adapter.port, CHAT, unstreamed(max_completion_tokens=16))
    assert code == 200, body
    [choice] = json.loads(body)["choices"]
    assert choice["finish_reason"] == "length" and choice["message"]["content"] == "Cut off at the tok"
    assert responses_upstream.attempts == 2  # one each: a legitimate end, not retried


def test_a_final_response_failed_is_a_chat_error(responses_upstream, adapter):
    responses_upstream.plan(raw(rs.failed("context_length_exceeded", CONTEXT)))
    error = {"error": {"message": CONTEXT, "type": "invalid_request_error", "code": "context_length_exceeded",
                       "param": None}}
    code, headers, body = post(adapter.port, CHAT, streamed())
    assert code == 200 and headers["content-type"].startswith("text/event-stream")
    frames = body.decode().split("\n\n")
    assert frames[-1] == "" and len(frames) == 2 and frames[0].startswith("data: ")  # the error line, as chat sends it
    assert json.loads(frames[0][len("data: "):]) == error
    assert responses_upstream.attempts == 1

    responses_upstream.reset()
    code, headers, body = post(adapter.port, CHAT, unstreamed())
    assert (code, json.loads(body)) == (400, error) and headers["content-type"] == "application/json"
    assert responses_upstream.attempts == 1


def test_response_incomplete_for_content_filter_is_finish_reason_content_filter(responses_upstream, adapter):
    responses_upstream.plan(raw(rs.incomplete("Part of it", reason="content_filter")))
    chunks = chunks_of(post(adapter.port, CHAT, streamed())[2])
    assert content_of(chunks) == "Part of it" and finish_of(chunks) == "content_filter"


@pytest.mark.parametrize("after", ["nothing", "response.completed"])
def test_a_final_error_event_is_a_chat_error(responses_upstream, adapter, after):
    """The shield judges a stream by a final error event; the chat client gets that error, as a Responses client
    does (400 or an error line), even when the stream goes on to response.completed. Before: the completed
    answer was translated, and the chat client got a 200 chat.completion for a failed stream."""
    whole = rs.answer(TEXT, deltas=6)
    middle = whole.index(b"event: response.output_text.done")
    body = whole[:middle] + rs.error_event("content_filter", "The response was filtered.")
    if after == "response.completed":
        body += whole[middle:]
    responses_upstream.plan(raw(body))
    error = {"error": {"message": "The response was filtered.", "type": "invalid_request_error",
                       "code": "content_filter", "param": None}}
    code, _, received = post(adapter.port, CHAT, unstreamed())
    assert (code, json.loads(received)) == (400, error)
    code, headers, received = post(adapter.port, CHAT, streamed())
    assert code == 200 and headers["content-type"].startswith("text/event-stream")
    assert received == b"data: " + json.dumps(error).encode() + b"\n\n"
    code, _, received = post(adapter.port, "/v1/responses", json.dumps({"model": "m", "input": "hi"}).encode())
    assert code == 400 and json.loads(received)["error"]["code"] == "content_filter"  # what a Responses client gets
    assert responses_upstream.attempts == 3  # one each: a final error is not retried


def test_insufficient_quota_is_a_429(responses_upstream, adapter):
    responses_upstream.plan(raw(rs.failed("insufficient_quota", "You exceeded your current quota.")))
    code, _, body = post(adapter.port, CHAT, unstreamed())
    assert code == 429 and json.loads(body)["error"]["code"] == "insufficient_quota"
    assert json.loads(body)["error"]["type"] == "insufficient_quota" and responses_upstream.attempts == 1


def test_options_are_mapped_kept_and_dropped(responses_upstream, adapter):
    responses_upstream.plan(raw(rs.answer('{"ok": true}')))
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    code, _, body = post(adapter.port, CHAT, streamed(
        max_completion_tokens=500, reasoning_effort="high", temperature=0.2, top_p=0.9, user="u-1", store=True,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}))
    assert code == 200, body
    sent = responses_upstream.requests[-1].json
    assert sent["max_output_tokens"] == 500 and sent["reasoning"] == {"effort": "high"}
    assert sent["text"] == {"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}}
    assert (sent["temperature"], sent["top_p"], sent["user"]) == (0.2, 0.9, "u-1")
    assert sent["store"] is False  # dropped: the proxy never asks the upstream to store
    assert not {"max_completion_tokens", "reasoning_effort", "response_format"} & set(sent)


# -- 6. what a Responses upstream cannot honour -----------------------------------------------------------------------


@pytest.mark.parametrize("name, value", [("n", 2), ("logprobs", True), ("top_logprobs", 3), ("seed", 7),
                                         ("stop", ["\n\n"]), ("presence_penalty", 0.5)])
def test_a_parameter_without_equivalent_is_refused_before_anything_is_sent(responses_upstream, adapter, name, value):
    for body in (streamed(**{name: value}), unstreamed(**{name: value})):
        code, headers, received = post(adapter.port, CHAT, body)
        assert code == 400 and headers["content-type"] == "application/json"
        error = json.loads(received)["error"]
        assert repr(name) in error["message"] and error["code"] == "unsupported_parameter"
    assert responses_upstream.requests == [] and responses_upstream.attempts == 0


def test_values_that_ask_for_nothing_pass(responses_upstream, adapter):
    responses_upstream.plan(raw(rs.answer(TEXT)))
    code, _, body = post(adapter.port, CHAT, streamed(n=1, logprobs=False, presence_penalty=0, stop=None))
    assert code == 200 and content_of(chunks_of(body)) == TEXT
    assert not {"n", "logprobs", "presence_penalty", "stop"} & set(responses_upstream.requests[-1].json)


# -- 7. auto mode -----------------------------------------------------------------------------------------------------


def test_auto_mode_on_a_responses_only_base_url_says_to_set_upstream_api(responses_upstream, make_proxy):
    shield = make_proxy(responses_upstream, UPSTREAM_API=None)
    for body in (streamed(), unstreamed()):
        responses_upstream.reset()
        code, headers, received = post(shield.port, CHAT, body)
        assert code == 502 and headers["content-type"] == "application/json"
        error = json.loads(received)["error"]
        assert error["code"] == "wrong_upstream_api" and "UPSTREAM_API=responses" in error["message"]
        assert responses_upstream.attempts == 1 and responses_upstream.requests[-1].path == CHAT


def test_a_responses_stream_for_a_chat_request_is_not_retried(make_proxy):
    with FakeUpstream() as both:
        shield = make_proxy(both, UPSTREAM_API=None)  # MAX_RETRIES stays 8: a retry would show
        both.plan(raw(rs.answer(TEXT)))
        for body in (streamed(), unstreamed()):
            both.reset()
            code, _, received = post(shield.port, CHAT, body)
            assert code == 502, received
            error = json.loads(received)["error"]
            assert error["code"] == "wrong_api" and "UPSTREAM_API=responses" in error["message"]
            assert error["attempts"] == 1 and both.attempts == 1 and both.requests[-1].path == CHAT


def test_a_chat_stream_for_a_translated_request_names_upstream_api_chat(make_proxy):
    """UPSTREAM_API=responses on an upstream that answers in Chat Completions: said at once, not retried."""
    with FakeUpstream() as both:
        shield = make_proxy(both, UPSTREAM_API="responses")
        both.plan(raw(chat_answer(TEXT)))
        code, _, received = post(shield.port, CHAT, streamed())
        assert code == 502, received
        error = json.loads(received)["error"]
        assert error["code"] == "wrong_api" and "UPSTREAM_API=chat" in error["message"]
        assert both.attempts == 1 and both.requests[-1].path == "/v1/responses"


def test_responses_requests_pass_as_they_are(responses_upstream, adapter):
    """UPSTREAM_API=responses translates only chat requests: Codex's bytes go up as they came."""
    responses_upstream.plan(raw(rs.answer(TEXT)))
    body = json.dumps({"model": "gpt-5-codex", "input": "hi", "stream": True}).encode()
    code, _, received = post(adapter.port, "/v1/responses", body)
    assert code == 200 and received == responses_upstream.sent[-1]
    assert responses_upstream.requests[-1].body == body


def test_auto_mode_translates_for_a_full_responses_url_and_keeps_its_query(responses_upstream, make_proxy):
    endpoint = responses_upstream.url + "/openai/v1/responses?api-version=preview"
    shield = make_proxy(responses_upstream, AZURE_ENDPOINT=endpoint, UPSTREAM_API=None)
    responses_upstream.plan(raw(rs.answer(TEXT)))
    code, _, body = post(shield.port, CHAT, streamed())
    assert code == 200, body
    sent = responses_upstream.requests[-1]
    assert (sent.path, sent.query) == ("/openai/v1/responses", "api-version=preview")
    assert sent.json["input"] == [user_input()] and "messages" not in sent.json
    assert content_of(chunks_of(body)) == TEXT


# -- 8. FORCED_MODEL, the log line and /health ------------------------------------------------------------------------


def test_forced_model_reaches_the_translated_request(responses_upstream, make_proxy):
    shield = make_proxy(responses_upstream, UPSTREAM_API="responses", FORCED_MODEL="gpt-5-codex")
    responses_upstream.plan(raw(rs.answer(TEXT)))
    code, _, body = post(shield.port, CHAT, streamed(model="gpt-4o"))
    assert code == 200, body
    sent = responses_upstream.requests[-1].json
    assert sent["model"] == "gpt-5-codex" and sent["input"] == [user_input()]


def test_summary_line_and_health_name_both_apis(responses_upstream, adapter, caplog):
    caplog.set_level(logging.INFO, logger="retry_shield")
    responses_upstream.plan(raw(rs.answer(TEXT)))
    assert post(adapter.port, CHAT, streamed(model="gpt-log"))[0] == 200
    assert post(adapter.port, CHAT, unstreamed(model="gpt-log"))[0] == 200
    lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith("POST " + CHAT)]
    assert len(lines) == 2
    for line in lines:
        assert " 200 attempts=1 " in line and "model=gpt-log" in line
        assert "api=chat->responses" in line and "tokens=1200/300" in line
    code, _, body = request(adapter.port, "GET", "/health", body=None)
    health = json.loads(body)
    assert code == 200 and health["upstream_api"] == "responses"
    assert health["apis"] == {"chat->responses": 2}


# -- 9. the official openai SDK ---------------------------------------------------------------------------------------


@pytest.fixture
def sdk(adapter):
    return openai.OpenAI(base_url=adapter.url + "/v1", api_key="x", max_retries=0, timeout=30)


QUESTION = [{"role": "user", "content": "hi"}]
SDK_TOOLS = [WEATHER, CLOCK]


def test_sdk_streamed(responses_upstream, sdk):
    responses_upstream.plan(status(429), raw(rs.answer(TEXT, deltas=4)))
    chunks = list(sdk.chat.completions.create(model="gpt-5-codex", messages=QUESTION, stream=True))
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == TEXT
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason == "stop"
    assert responses_upstream.attempts == 2


def test_sdk_not_streamed(responses_upstream, sdk):
    responses_upstream.plan(cut(300), raw(rs.answer(TEXT)))
    completion = sdk.chat.completions.create(model="gpt-5-codex", messages=QUESTION)
    assert completion.choices[0].message.content == TEXT and completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (
        1200, 300, 1500)
    assert completion.usage.prompt_tokens_details.cached_tokens == 1024
    assert completion.usage.completion_tokens_details.reasoning_tokens == 256
    assert responses_upstream.attempts == 2


def test_sdk_include_usage(responses_upstream, sdk):
    responses_upstream.plan(raw(rs.answer(TEXT)))
    chunks = list(sdk.chat.completions.create(model="gpt-5-codex", messages=QUESTION, stream=True,
                                              stream_options={"include_usage": True}))
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == TEXT
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 1500
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 1024
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_sdk_tool_calls_come_back_whole_and_round_trip(responses_upstream, sdk):
    responses_upstream.plan(raw(rs.answer(calls=CALLS, deltas=5)), raw(rs.answer("Sunny, 21 C, 14:00.")))
    first = sdk.chat.completions.create(model="gpt-5-codex", messages=QUESTION, tools=SDK_TOOLS)
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    assert [(call.id, call.function.name, call.function.arguments) for call in message.tool_calls] == CALLS
    assert json.loads(message.tool_calls[0].function.arguments) == {"city": "Paris", "unit": "C"}

    second = sdk.chat.completions.create(model="gpt-5-codex", tools=SDK_TOOLS, messages=QUESTION + [
        message.model_dump(exclude_none=True)] + [
        {"role": "tool", "tool_call_id": call.id, "content": "result of " + call.function.name}
        for call in message.tool_calls])
    assert second.choices[0].message.content == "Sunny, 21 C, 14:00."
    sent = responses_upstream.requests[-1].json["input"]
    assert [item["type"] for item in sent] == ["message", "function_call", "function_call", "function_call_output",
                                               "function_call_output"]
    assert [(item["call_id"], item["name"], item["arguments"]) for item in sent[1:3]] == CALLS
    assert [(item["call_id"], item["output"]) for item in sent[3:]] == [
        ("call_w", "result of get_weather"), ("call_t", "result of get_time")]


def test_sdk_stream_helper_accumulates_the_calls(responses_upstream, sdk):
    """The SDK's own accumulator (chat.completions.stream) checks each chunk against what came before it."""
    responses_upstream.plan(raw(rs.answer("Let me look.", thoughts=["Weather needs a tool."], calls=CALLS)))
    with sdk.chat.completions.stream(model="gpt-5-codex", messages=QUESTION, tools=SDK_TOOLS) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    done = [(event.index, event.name, event.arguments) for event in events
            if event.type == "tool_calls.function.arguments.done"]
    assert done == [(index, name, arguments) for index, (_, name, arguments) in enumerate(CALLS)]
    assert [event.content for event in events if event.type == "content.done"] == ["Let me look."]
    message = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls" and message.content == "Let me look."
    assert [(call.id, call.function.name, call.function.arguments) for call in message.tool_calls] == CALLS


def test_sdk_sees_a_final_failure_as_an_error(responses_upstream, sdk):
    responses_upstream.plan(raw(rs.failed("context_length_exceeded", CONTEXT)))
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.chat.completions.create(model="gpt-5-codex", messages=QUESTION)
    assert raised.value.code == "context_length_exceeded" and CONTEXT in str(raised.value)
    with pytest.raises(openai.APIError) as raised:
        list(sdk.chat.completions.create(model="gpt-5-codex", messages=QUESTION, stream=True))
    assert CONTEXT in str(raised.value)
    assert responses_upstream.attempts == 2  # one each: a final failure is not retried
