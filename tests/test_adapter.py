"""Issue 11 end to end: Responses clients (http.client, the openai SDK) through the real proxy in front of a
chat-only upstream. The proxy translates the request to Chat Completions, shields it on the chat protocol
and translates only the good attempt back, as a Responses stream or response object."""

import json
import logging

import openai
import pytest

from tests.chat_streams import USAGE, chat_answer, chat_error
from tests.fake_upstream import FakeUpstream, cut, failed, raw, reset, status
from tests.helpers import post, request

TEXT = "The whole answer, every word of it, translated back."
API_ORDER = [
    "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
    "response.output_text.delta", "response.output_text.done", "response.content_part.done",
    "response.output_item.done", "response.completed",
]
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather of a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CLOCK = {"type": "function", "name": "get_time", "description": "Time in a zone.",
         "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}
APPLY_PATCH = {"type": "custom", "name": "apply_patch", "description": "Apply a patch to the files."}
PATCH = "*** Begin Patch\n*** Add File: a.txt\n+hello \"world\"\n*** End Patch\n"


@pytest.fixture
def adapter(chat_upstream, make_proxy):
    """The proxy told that its upstream (a base URL) speaks Chat Completions."""
    return make_proxy(chat_upstream, UPSTREAM_API="chat")


def streamed(**fields):
    return dict({"model": "m", "input": "hi", "stream": True}, **fields)


def unstreamed(**fields):
    return dict({"model": "m", "input": "hi"}, **fields)


def events_of(body):
    """The SSE events of a Responses stream; each frame must be exactly ``event:`` and ``data:`` of one type."""
    events = []
    for frame in body.decode("utf-8").split("\n\n"):
        if not frame:
            continue
        name, data = frame.split("\n")
        assert name.startswith("event: ") and data.startswith("data: "), frame
        event = json.loads(data[len("data: "):])
        assert event["type"] == name[len("event: "):]
        events.append(event)
    assert body.endswith(b"\n\n")
    return events


def assert_numbered(events):
    assert [event["sequence_number"] for event in events] == list(range(len(events)))


def text_of(response):
    return "".join(part["text"] for item in response["output"] if item["type"] == "message"
                   for part in item["content"] if part["type"] == "output_text")


def assert_usage(usage):
    assert usage == {"input_tokens": 11, "input_tokens_details": {"cached_tokens": 5, "cache_write_tokens": 0},
                     "output_tokens": 22, "output_tokens_details": {"reasoning_tokens": 7}, "total_tokens": 33}
    assert usage["input_tokens_details"]["cached_tokens"] == USAGE["prompt_tokens_details"]["cached_tokens"]


# -- 1. a streamed Responses request --------------------------------------------------------------------------------


def test_streamed_responses_request_is_translated_both_ways(chat_upstream, adapter):
    chat_upstream.plan(raw(chat_answer(TEXT, split=5)))
    code, headers, body = post(adapter.port, body=streamed(instructions="Be brief."))
    assert code == 200, body
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["content-length"] == str(len(body))
    sent = chat_upstream.requests[-1]
    assert (sent.method, sent.path) == ("POST", "/v1/chat/completions")
    assert sent.json["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert sent.json["stream"] is True and sent.json["stream_options"] == {"include_usage": True}
    assert sent.json["model"] == "m" and "input" not in sent.json and "instructions" not in sent.json
    events = events_of(body)
    assert [event["type"] for event in events] == API_ORDER
    assert_numbered(events)
    assert events[0]["response"]["status"] == "in_progress"
    assert events[4]["delta"] == TEXT and events[5]["text"] == TEXT
    response = events[-1]["response"]
    assert response["object"] == "response" and response["status"] == "completed"
    assert response["id"].startswith("resp_") and response["model"] == "chat-model"
    assert text_of(response) == TEXT and response["instructions"] == "Be brief."
    assert_usage(response["usage"])
    assert chat_upstream.attempts == 1


def test_each_request_gets_its_own_ids(chat_upstream, adapter):
    chat_upstream.plan(raw(chat_answer(TEXT)))
    first = events_of(post(adapter.port, body=streamed())[2])[-1]["response"]
    second = events_of(post(adapter.port, body=streamed())[2])[-1]["response"]
    assert first["id"] != second["id"] and first["output"][0]["id"] != second["output"][0]["id"]


# -- 2. faults on the chat side ---------------------------------------------------------------------------------------


def test_chat_side_faults_are_absorbed_and_only_the_good_attempt_is_translated(chat_upstream, adapter):
    chat_upstream.plan(status(429), cut(150), reset(), raw(chat_answer(TEXT)))
    code, _, body = post(adapter.port, body=streamed())
    assert code == 200, body
    assert chat_upstream.attempts == 4
    assert all(seen.path == "/v1/chat/completions" for seen in chat_upstream.requests)
    events = events_of(body)
    assert [event["type"] for event in events] == API_ORDER  # one answer: no second created, no partial text
    assert_numbered(events)
    assert text_of(events[-1]["response"]) == TEXT
    assert b"Hello from upstream" not in body  # the cut attempt's text
    assert len(chat_upstream.sent) == 4 and b"[DONE]" not in chat_upstream.sent[1]  # the cut attempt was partial


def test_a_retryable_chat_error_line_is_retried_not_translated(chat_upstream, adapter):
    chat_upstream.plan(failed(code="server_error", message="The server had an error."), raw(chat_answer(TEXT)))
    code, _, body = post(adapter.port, body=streamed())
    assert code == 200, body
    events = events_of(body)
    assert [event["type"] for event in events] == API_ORDER and text_of(events[-1]["response"]) == TEXT
    assert b"server had an error" not in body and chat_upstream.attempts == 2


def test_a_chat_400_reaches_the_client_as_it_came(chat_upstream, adapter):
    refusal = {"error": {"message": "Invalid value for 'messages'.", "type": "invalid_request_error",
                         "param": "messages", "code": "invalid_value"}}
    chat_upstream.plan(status(400, body=refusal))
    for body in (streamed(), unstreamed()):
        chat_upstream.reset()
        code, headers, received = post(adapter.port, body=body)
        assert (code, json.loads(received)) == (400, refusal) and headers["content-type"] == "application/json"
        assert chat_upstream.attempts == 1


# -- 3. a non-streaming Responses client ------------------------------------------------------------------------------


def test_non_streaming_client_gets_the_response_object(chat_upstream, adapter):
    chat_upstream.plan(status(503), raw(chat_answer(TEXT)))
    code, headers, body = post(adapter.port, body=unstreamed())
    assert code == 200, body
    assert headers["content-type"] == "application/json"
    response = json.loads(body)
    assert response["object"] == "response" and response["status"] == "completed"
    assert response["output"][0]["type"] == "message" and response["output"][0]["role"] == "assistant"
    assert text_of(response) == TEXT
    assert_usage(response["usage"])
    assert chat_upstream.requests[-1].json["stream"] is True  # forced, for the shield to judge
    assert chat_upstream.attempts == 2


def test_a_chat_upstream_that_does_not_stream_is_translated_too(chat_upstream, adapter):
    completion = {"id": "chatcmpl-9", "object": "chat.completion", "created": 1700000000, "model": "chat-model",
                  "choices": [{"index": 0, "finish_reason": "stop",
                               "message": {"role": "assistant", "content": TEXT}}],
                  "usage": USAGE}
    chat_upstream.plan(status(200, body=completion))
    for wants_stream in (True, False):
        code, _, body = post(adapter.port, body=dict(unstreamed(), stream=wants_stream))
        assert code == 200, body
        response = events_of(body)[-1]["response"] if wants_stream else json.loads(body)
        assert response["status"] == "completed" and text_of(response) == TEXT
        assert_usage(response["usage"])


@pytest.mark.parametrize("answer", [b"<html>OK</html>", b"[1, 2]", b'"done"', b'{"choices": "x"}',
                                    b'{"choices": [{"message": "text"}]}'])
def test_a_json_answer_that_is_no_chat_completion_is_a_clean_502(chat_upstream, adapter, answer, caplog):
    """Before: the translator raised in the handler, and the client's connection closed without an answer."""
    chat_upstream.plan(status(200, body=answer))
    for body in (streamed(), unstreamed()):
        code, headers, received = post(adapter.port, body=body)
        assert code == 502 and headers["content-type"] == "application/json"
        error = json.loads(received)["error"]
        assert error["code"] == "bad_answer" and "chat.completion" in error["message"]
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


# -- 4. auto mode, a full Azure-style chat URL ------------------------------------------------------------------------


def test_auto_mode_translates_for_a_full_chat_url_and_keeps_its_query(chat_upstream, make_proxy):
    endpoint = chat_upstream.url + "/openai/deployments/dep/chat/completions?api-version=2024-10-21"
    shield = make_proxy(chat_upstream, AZURE_ENDPOINT=endpoint, UPSTREAM_API=None)
    chat_upstream.plan(raw(chat_answer(TEXT)))
    code, _, body = post(shield.port, body=streamed())
    assert code == 200, body
    sent = chat_upstream.requests[-1]
    assert sent.path == "/openai/deployments/dep/chat/completions"
    assert sent.query == "api-version=2024-10-21"
    assert sent.json["messages"] == [{"role": "user", "content": "hi"}]
    events = events_of(body)
    assert [event["type"] for event in events] == API_ORDER and text_of(events[-1]["response"]) == TEXT


# -- 5. auto mode on a base URL: a wrong API is a final error that names UPSTREAM_API --------------------------------


def test_auto_mode_on_a_chat_upstream_base_url_says_to_set_upstream_api(chat_upstream, make_proxy):
    shield = make_proxy(chat_upstream, UPSTREAM_API=None)
    for body in (streamed(), unstreamed()):
        chat_upstream.reset()
        code, headers, received = post(shield.port, body=body)
        assert code == 502 and headers["content-type"] == "application/json"
        error = json.loads(received)["error"]
        assert error["code"] == "wrong_upstream_api" and "UPSTREAM_API=chat" in error["message"]
        assert chat_upstream.attempts == 1 and chat_upstream.requests[-1].path == "/v1/responses"


def test_a_chat_stream_for_a_responses_request_is_not_retried(make_proxy):
    """Before: a chat stream never has response.completed, so it was "unterminated" and tried 9 times."""
    with FakeUpstream() as both:
        shield = make_proxy(both, UPSTREAM_API=None)  # MAX_RETRIES stays 8: a retry would show
        both.plan(raw(chat_answer(TEXT)))
        for body in (streamed(), unstreamed()):
            both.reset()
            code, _, received = post(shield.port, body=body)
            assert code == 502, received
            error = json.loads(received)["error"]
            assert error["code"] == "wrong_api" and "UPSTREAM_API=chat" in error["message"]
            assert error["attempts"] == 1 and both.attempts == 1
            assert both.requests[-1].path == "/v1/responses"


# -- 6. tool calls and reasoning --------------------------------------------------------------------------------------


def test_parallel_tool_calls_become_function_call_items(chat_upstream, adapter):
    calls = [("call_w", "get_weather", '{"city": "Paris", "unit": "C"}'), ("call_t", "get_time", '{"tz": "CET"}')]
    chat_upstream.plan(raw(chat_answer(calls=calls, split=4)))
    code, _, body = post(adapter.port, body=streamed(tools=[WEATHER, CLOCK], parallel_tool_calls=True))
    assert code == 200, body
    sent = chat_upstream.requests[-1].json
    assert [tool["function"]["name"] for tool in sent["tools"]] == ["get_weather", "get_time"]
    assert sent["parallel_tool_calls"] is True
    events = events_of(body)
    assert_numbered(events)
    assert events[-1]["type"] == "response.completed"
    output = events[-1]["response"]["output"]
    assert [(item["type"], item["name"], item["call_id"], item["arguments"]) for item in output] == [
        ("function_call", name, call_id, arguments) for call_id, name, arguments in calls]
    assert all(item["status"] == "completed" for item in output)
    done = [event["arguments"] for event in events if event["type"] == "response.function_call_arguments.done"]
    assert done == [arguments for _, _, arguments in calls]
    added = [event["item"] for event in events if event["type"] == "response.output_item.added"]
    assert [item["call_id"] for item in added] == ["call_w", "call_t"]


def test_a_custom_tool_call_comes_back_as_custom_tool_call(chat_upstream, adapter):
    chat_upstream.plan(raw(chat_answer(calls=[("call_p", "apply_patch", json.dumps({"input": PATCH}))], split=6)))
    code, _, body = post(adapter.port, body=streamed(tools=[APPLY_PATCH, WEATHER]))
    assert code == 200, body
    function = chat_upstream.requests[-1].json["tools"][0]["function"]
    assert function["name"] == "apply_patch" and function["parameters"]["required"] == ["input"]
    events = events_of(body)
    response = events[-1]["response"]
    assert events[-1]["type"] == "response.completed"
    [item] = response["output"]
    assert item["type"] == "custom_tool_call" and item["name"] == "apply_patch"
    assert item["call_id"] == "call_p" and item["input"] == PATCH and "arguments" not in item
    assert [event["input"] for event in events if event["type"] == "response.custom_tool_call_input.done"] == [PATCH]


def test_reasoning_content_becomes_a_reasoning_item_before_the_message(chat_upstream, adapter):
    thought = "First think about the question, then answer it."
    chat_upstream.plan(raw(chat_answer(TEXT, reasoning=thought)))
    for wants_stream in (True, False):
        code, _, body = post(adapter.port, body=dict(unstreamed(), stream=wants_stream))
        assert code == 200, body
        response = events_of(body)[-1]["response"] if wants_stream else json.loads(body)
        if wants_stream:
            events = events_of(body)
            assert_numbered(events)
            indexes = [event["output_index"] for event in events if "output_index" in event]
            assert indexes == sorted(indexes) and set(indexes) == {0, 1}  # the reasoning's events first
            assert [event["delta"] for event in events if event["type"] == "response.reasoning_text.delta"] == [
                thought]
        reasoning, message = response["output"]
        assert reasoning["type"] == "reasoning"
        assert reasoning["content"] == [{"type": "reasoning_text", "text": thought}]
        assert message["type"] == "message" and text_of(response) == TEXT
        assert response["usage"]["output_tokens_details"]["reasoning_tokens"] == 7


# -- 7. incomplete and failed answers ---------------------------------------------------------------------------------


def test_finish_reason_length_is_response_incomplete(chat_upstream, adapter):
    chat_upstream.plan(raw(chat_answer("Cut off at the tok", finish="length")))
    code, _, body = post(adapter.port, body=streamed(max_output_tokens=16))
    assert code == 200, body
    assert chat_upstream.requests[-1].json["max_tokens"] == 16
    events = events_of(body)
    assert_numbered(events)
    assert events[-1]["type"] == "response.incomplete"
    response = events[-1]["response"]
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][-1]["status"] == "incomplete" and text_of(response) == "Cut off at the tok"
    code, _, body = post(adapter.port, body=unstreamed())
    assert code == 200 and json.loads(body)["incomplete_details"] == {"reason": "max_output_tokens"}
    assert chat_upstream.attempts == 2  # one each: a legitimate end, not retried


def test_a_final_chat_error_is_response_failed_or_an_http_400(chat_upstream, adapter):
    chat_upstream.plan(raw(chat_error("context_length_exceeded", "Your input is far too long.")))
    code, _, body = post(adapter.port, body=streamed())
    assert code == 200, body
    events = events_of(body)
    assert_numbered(events)
    assert [event["type"] for event in events] == ["response.created", "response.in_progress", "response.failed"]
    response = events[-1]["response"]
    assert response["status"] == "failed" and response["output"] == []
    assert response["error"] == {"code": "context_length_exceeded", "message": "Your input is far too long."}
    assert chat_upstream.attempts == 1

    chat_upstream.reset()
    code, headers, body = post(adapter.port, body=unstreamed())
    assert code == 400 and headers["content-type"] == "application/json"
    assert json.loads(body) == {"error": {"code": "context_length_exceeded",
                                          "message": "Your input is far too long."}}
    assert chat_upstream.attempts == 1


# -- 8. FORCED_MODEL, giving up, what a chat upstream cannot honour ---------------------------------------------------


def test_forced_model_reaches_the_translated_request(chat_upstream, make_proxy):
    shield = make_proxy(chat_upstream, UPSTREAM_API="chat", FORCED_MODEL="gpt-forced")
    chat_upstream.plan(raw(chat_answer(TEXT)))
    code, _, body = post(shield.port, body=streamed(model="gpt-asked"))
    assert code == 200, body
    assert chat_upstream.requests[-1].json["model"] == "gpt-forced"


def test_giving_up_keeps_the_upstreams_last_error(chat_upstream, make_proxy):
    shield = make_proxy(chat_upstream, UPSTREAM_API="chat", MAX_RETRIES="1")
    last = {"error": {"message": "second 503, the one to pass on", "type": "server_error", "code": "overloaded"}}
    chat_upstream.plan(status(503, body={"error": {"message": "first 503"}}), status(503, body=last,
                                                                                   headers={"Retry-After": "0"}))
    for body in (streamed(), unstreamed()):
        chat_upstream.reset()
        code, headers, received = post(shield.port, body=body)
        assert code == 503 and json.loads(received) == last
        assert headers["content-type"] == "application/json" and headers["retry-after"] == "0"
        assert chat_upstream.attempts == 2


def test_previous_response_id_is_refused_before_anything_is_sent(chat_upstream, adapter):
    code, _, body = post(adapter.port, body=streamed(previous_response_id="resp_123"))
    assert code == 400
    error = json.loads(body)["error"]
    assert "previous_response_id" in error["message"] and error["code"] == "unsupported_parameter"
    assert chat_upstream.requests == [] and chat_upstream.attempts == 0


# -- 9. the official openai SDK ---------------------------------------------------------------------------------------


@pytest.fixture
def sdk(adapter):
    return openai.OpenAI(base_url=adapter.url + "/v1", api_key="x", max_retries=0, timeout=30)


def test_sdk_streamed(chat_upstream, sdk):
    chat_upstream.plan(status(429), raw(chat_answer(TEXT, split=4)))
    events = list(sdk.responses.create(model="m", input="hi", stream=True))
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert "".join(deltas) == TEXT
    assert events[-1].type == "response.completed" and events[-1].response.output_text == TEXT
    assert events[-1].response.usage.total_tokens == 33
    assert chat_upstream.attempts == 2


def test_sdk_not_streamed(chat_upstream, sdk):
    chat_upstream.plan(cut(100), raw(chat_answer(TEXT)))
    response = sdk.responses.create(model="m", input="hi")
    assert response.output_text == TEXT and response.status == "completed"
    assert response.usage.input_tokens == 11 and response.usage.output_tokens == 22
    assert response.usage.input_tokens_details.cached_tokens == 5
    assert response.usage.output_tokens_details.reasoning_tokens == 7
    assert chat_upstream.attempts == 2


def test_sdk_stream_helper_accumulates_reasoning_text_and_a_call(chat_upstream, sdk):
    """The SDK's own accumulator (responses.stream) checks each event against what came before it."""
    chat_upstream.plan(raw(chat_answer("Let me look.", reasoning="Weather needs a tool.",
                                   calls=[("call_w", "get_weather", '{"city": "Oslo"}')])))
    with sdk.responses.stream(model="m", input="weather in Oslo?", tools=[dict(WEATHER, strict=False)]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert [item.type for item in final.output] == ["reasoning", "message", "function_call"]
    assert final.output_text == "Let me look." and final.output[0].content[0].text == "Weather needs a tool."
    assert final.output[2].call_id == "call_w" and final.output[2].arguments == '{"city": "Oslo"}'


def test_sdk_function_call_round_trip(chat_upstream, sdk):
    tool = {"type": "function", "name": "lookup", "description": "Look a fact up.", "strict": False,
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}
    question = {"role": "user", "content": "What is the answer?"}
    chat_upstream.plan(raw(chat_answer(calls=[("call_42", "lookup", '{"q": "the answer"}')])),
                   raw(chat_answer("The answer is 42.")))
    first = sdk.responses.create(model="m", input=[question], tools=[tool])
    [call] = first.output
    assert call.type == "function_call" and call.name == "lookup" and call.call_id == "call_42"
    assert json.loads(call.arguments) == {"q": "the answer"}

    second = sdk.responses.create(model="m", tools=[tool], input=[
        question, call, {"type": "function_call_output", "call_id": call.call_id, "output": "42"}])
    assert second.output_text == "The answer is 42."
    messages = chat_upstream.requests[-1].json["messages"]
    assert messages[0] == {"role": "user", "content": "What is the answer?"}
    assert messages[1]["role"] == "assistant" and messages[1]["tool_calls"] == [
        {"id": "call_42", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "the answer"}'}}]
    assert messages[2] == {"role": "tool", "tool_call_id": "call_42", "content": "42"}
    assert len(messages) == 3 and chat_upstream.attempts == 2


# -- 10. the log line and /health -------------------------------------------------------------------------------------


def test_summary_line_and_health_name_both_apis(chat_upstream, adapter, caplog):
    caplog.set_level(logging.INFO, logger="retry_shield")
    chat_upstream.plan(raw(chat_answer(TEXT)))
    assert post(adapter.port, body=streamed(model="gpt-log"))[0] == 200
    assert post(adapter.port, body=unstreamed(model="gpt-log"))[0] == 200
    lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith("POST /v1/responses")]
    assert len(lines) == 2
    for line in lines:
        assert " 200 attempts=1 " in line and "model=gpt-log" in line
        assert "api=responses->chat" in line and "tokens=11/22" in line
    code, _, body = request(adapter.port, "GET", "/health", body=None)
    health = json.loads(body)
    assert code == 200 and health["upstream_api"] == "chat"
    assert health["apis"] == {"responses->chat": 2}
