"""The Chat Completions -> Responses request translation, socket-free: built requests, and those of real clients."""

import copy
import json
import logging
import random

import httpx2
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types import responses as rtypes
from openai.types.chat import completion_create_params
from openai.types.responses import response_create_params, response_input_param

from retry_shield.errors import ClientError
from retry_shield.responses_request import (DROPPED, KEPT, MAPPED, PARAMETERS, REFUSED, ResponsesPlan,
                                            to_responses)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def fields(typed_dict, *extra):
    names = set(extra)
    for klass in typed_dict.__mro__:
        names.update(getattr(klass, "__annotations__", {}))
    return names


def request(*messages, **options):
    return dict({"model": "gpt-5-codex", "messages": list(messages) or [user("hi")]}, **options)


def user(content):
    return {"role": "user", "content": content}


def assistant(content=None, **extra):
    return dict({"role": "assistant", "content": content}, **extra)


def tool_call(call_id, name="get_weather", arguments='{"city":"Paris"}'):
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def tool(call_id, content="sunny"):
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def text_message(role, *texts, kind="input_text"):
    return {"type": "message", "role": role, "content": [{"type": kind, "text": text} for text in texts]}


def translated(req):
    return to_responses(req)[0]


def refused(req):
    with pytest.raises(ClientError) as caught:
        to_responses(req)
    assert caught.value.status == 400
    return caught.value


def assert_sdk_fields(out):
    """Every field is one openai-python's Responses params name, for the request, its items, parts and tools."""
    assert set(out) <= fields(response_create_params.ResponseCreateParamsStreaming)
    items = {"function_call": rtypes.ResponseFunctionToolCallParam,
             "function_call_output": response_input_param.FunctionCallOutput}
    parts = {"input_text": rtypes.ResponseInputTextParam, "input_image": rtypes.ResponseInputImageParam,
             "input_file": rtypes.ResponseInputFileParam, "output_text": rtypes.ResponseOutputTextParam,
             "refusal": rtypes.ResponseOutputRefusalParam}
    for item in out["input"]:
        if item["type"] == "message":
            assert set(item) <= fields(rtypes.EasyInputMessageParam)
            assert item["content"] and all(set(part) <= fields(parts[part["type"]]) for part in item["content"])
            allowed = ("output_text", "refusal") if item["role"] == "assistant" else ("input_text", "input_image",
                                                                                      "input_file")
            assert all(part["type"] in allowed for part in item["content"]), item
        else:
            assert set(item) <= fields(items[item["type"]]), item
            for part in item["output"] if isinstance(item.get("output"), list) else []:
                assert set(part) <= fields(parts[part["type"]])
    for one in out.get("tools") or []:
        assert set(one) <= fields(rtypes.FunctionToolParam) and one["strict"] in (True, False)
        assert "parameters" in one
    fmt = (out.get("text") or {}).get("format")
    if fmt and fmt["type"] == "json_schema":
        assert set(fmt) <= fields(rtypes.ResponseFormatTextJSONSchemaConfigParam)
    assert set(out.get("text") or {}) <= fields(rtypes.ResponseTextConfigParam)
    choice = out.get("tool_choice")
    if isinstance(choice, dict):
        kind = {"function": rtypes.ToolChoiceFunctionParam, "allowed_tools": rtypes.ToolChoiceAllowedParam}
        assert set(choice) <= fields(kind[choice["type"]])
    assert out["store"] is False and out["stream"] is True


# -- the parameter table ----------------------------------------------------------------------------------------------

def test_the_table_decides_every_parameter_the_sdk_knows():
    assert set(PARAMETERS) == fields(completion_create_params.CompletionCreateParamsStreaming)
    responses = fields(response_create_params.ResponseCreateParamsStreaming)
    for name, handling in PARAMETERS.items():
        assert handling.action in (MAPPED, KEPT, DROPPED, REFUSED)
        assert handling.action != KEPT or name in responses, name
        assert handling.action != REFUSED or handling.why, name
        assert handling.neutral == () or handling.action == REFUSED


KEPT_VALUES = {"temperature": 0.2, "top_p": 0.9, "user": "u-1", "metadata": {"team": "a"},
               "safety_identifier": "hash", "prompt_cache_key": "k", "prompt_cache_retention": "24h",
               "prompt_cache_options": {"mode": "implicit"}, "service_tier": "flex",
               "moderation": {"model": "omni-moderation-latest"}}


def test_kept_parameters_go_as_they_are_in_the_order_of_the_table():
    assert set(KEPT_VALUES) == {name for name, handling in PARAMETERS.items() if handling.action == KEPT}
    out = translated(request(**dict(reversed(list(KEPT_VALUES.items())))))
    assert [name for name in out if name in KEPT_VALUES] == [name for name in PARAMETERS if name in KEPT_VALUES]
    assert {name: out[name] for name in KEPT_VALUES} == KEPT_VALUES
    assert_sdk_fields(out)


@pytest.mark.parametrize("name, value", [
    ("n", 2), ("n", 0), ("logprobs", True), ("top_logprobs", 3), ("logit_bias", {"1712": -100}),
    ("presence_penalty", 0.5), ("frequency_penalty", -1), ("seed", 42), ("seed", 0), ("stop", "\n"),
    ("stop", ["END", "STOP"]), ("modalities", ["text", "audio"]), ("audio", {"voice": "alloy", "format": "wav"}),
    ("functions", [WEATHER["function"]]), ("function_call", {"name": "get_weather"}), ("web_search_options", {}),
])
def test_parameters_without_an_equivalent_are_refused_with_their_name(name, value):
    error = refused(request(**{name: value}))
    assert error.code == "unsupported_parameter" and repr(name) in error.message
    assert PARAMETERS[name].why in error.message


@pytest.mark.parametrize("name, value", [
    ("n", 1), ("logprobs", False), ("top_logprobs", 0), ("logit_bias", {}), ("presence_penalty", 0),
    ("frequency_penalty", 0.0), ("stop", []), ("stop", ""), ("modalities", ["text"]), ("functions", []),
    ("function_call", "auto"), ("function_call", "none"), ("store", True), ("store", False),
    ("prediction", {"type": "content", "content": "def f(): pass"}), ("stream_options", {"include_usage": False}),
] + [(name, None) for name in PARAMETERS if name not in ("messages",)])
def test_values_that_ask_for_nothing_pass_and_are_left_out(name, value):
    out = translated(request(**{name: value}))
    assert name not in out or name in ("model", "stream", "store")
    assert out == translated(request()) or name in ("model",)


def test_an_unknown_parameter_is_refused_with_its_name_and_a_null_one_is_absent():
    for name in ("num_ctx", "top_k", "repetition_penalty", "reasoning", "extra_body"):
        error = refused(request(**{name: 1}))
        assert error.code == "unsupported_parameter" and repr(name) in error.message
    assert translated(request(top_k=None)) == translated(request())


def test_the_first_bad_parameter_in_the_clients_order_is_named():
    assert "'seed'" in refused(request(seed=1, n=3)).message
    assert "'n'" in refused(dict(request(), n=3, seed=1)).message


def test_dropped_parameters_are_logged_at_debug(caplog):
    with caplog.at_level(logging.DEBUG, logger="retry_shield.responses_request"):
        translated(request(prediction={"type": "content", "content": "x"}))
    assert "prediction left out" in caplog.text


# -- options ----------------------------------------------------------------------------------------------------------

def test_store_is_always_false_and_stream_always_true():
    for extra in ({}, {"store": True}, {"stream": False}, {"stream": True}):
        out = translated(request(**extra))
        assert out["store"] is False and out["stream"] is True and list(out)[-2:] == ["store", "stream"]


def test_stream_options_are_left_out_and_include_usage_recorded_in_the_plan():
    for options, usage in ((None, False), ({}, False), ({"include_usage": False}, False),
                           ({"include_usage": True}, True), ({"include_usage": True, "include_obfuscation": False},
                                                            True)):
        out, plan = to_responses(request(stream=True, stream_options=options))
        assert "stream_options" not in out and plan.include_usage is usage
    assert refused(request(stream_options="yes")).code == "invalid_request"


def test_the_plan():
    out, plan = to_responses(request(tools=[WEATHER, dict(WEATHER, function=dict(WEATHER["function"], name="b"))]))
    assert plan == ResponsesPlan("gpt-5-codex", False, frozenset({"get_weather", "b"}))
    assert to_responses({"messages": [user("hi")]})[1].model == ""
    assert "model" not in to_responses({"messages": [user("hi")]})[0]
    assert to_responses(request())[1].tool_names == frozenset()


@pytest.mark.parametrize("extra, limit", [
    ({"max_tokens": 100}, 100), ({"max_completion_tokens": 200}, 200),
    ({"max_tokens": 300, "max_completion_tokens": 300}, 300), ({"max_tokens": None, "max_completion_tokens": 5}, 5),
])
def test_max_tokens_and_max_completion_tokens_become_max_output_tokens(extra, limit):
    out = translated(request(**extra))
    assert out["max_output_tokens"] == limit and "max_tokens" not in out and "max_completion_tokens" not in out


def test_max_tokens_and_max_completion_tokens_that_disagree_are_refused():
    error = refused(request(max_tokens=100, max_completion_tokens=200))
    assert "max_tokens (100)" in error.message and "max_completion_tokens (200)" in error.message


def test_reasoning_effort_becomes_reasoning_effort_without_asking_for_summaries():
    assert translated(request(reasoning_effort="high"))["reasoning"] == {"effort": "high"}
    assert "reasoning" not in translated(request())


def test_response_format_json_schema_is_flattened_into_text_format():
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    out = translated(request(response_format={"type": "json_schema", "json_schema": {
        "name": "out", "description": "the answer", "schema": schema, "strict": True}}))
    assert out["text"] == {"format": {"type": "json_schema", "name": "out", "description": "the answer",
                                      "schema": schema, "strict": True}}
    assert out["text"]["format"]["schema"] is schema
    assert_sdk_fields(out)


def test_a_json_schema_without_strict_stays_non_strict_and_one_without_a_name_gets_one():
    out = translated(request(response_format={"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}))
    assert out["text"]["format"] == {"type": "json_schema", "name": "response", "schema": {"type": "object"},
                                     "strict": False}


@pytest.mark.parametrize("kind", ["text", "json_object"])
def test_response_format_text_and_json_object(kind):
    assert translated(request(response_format={"type": kind}))["text"] == {"format": {"type": kind}}


@pytest.mark.parametrize("fmt", [{"type": "json_schema"}, {"type": "json_schema", "json_schema": {"name": "x"}},
                                 {"type": "grammar", "grammar": "root ::= x"}, "json", {}])
def test_response_formats_without_an_equivalent_are_refused(fmt):
    error = refused(request(response_format=fmt))
    assert error.code == "unsupported_parameter" and "response_format" in error.message


def test_verbosity_joins_the_format_in_text():
    out = translated(request(verbosity="low", response_format={"type": "json_object"}))
    assert out["text"] == {"format": {"type": "json_object"}, "verbosity": "low"}
    assert translated(request(verbosity="high"))["text"] == {"verbosity": "high"}


# -- tools ------------------------------------------------------------------------------------------------------------

def test_function_tools_are_flattened_and_not_strict_unless_the_client_says_so():
    strict = {"type": "function", "function": dict(WEATHER["function"], name="strict_one", strict=True)}
    out = translated(request(tools=[WEATHER, strict]))
    assert out["tools"] == [
        {"type": "function", "name": "get_weather", "description": "Weather of a city",
         "parameters": WEATHER["function"]["parameters"], "strict": False},
        {"type": "function", "name": "strict_one", "description": "Weather of a city",
         "parameters": WEATHER["function"]["parameters"], "strict": True}]
    assert_sdk_fields(out)


def test_a_function_without_description_or_parameters():
    out = translated(request(tools=[{"type": "function", "function": {"name": "now", "description": None}}]))
    assert out["tools"] == [{"type": "function", "name": "now", "strict": False, "parameters": {
        "type": "object", "properties": {}, "additionalProperties": False}}]


@pytest.mark.parametrize("tools, where", [
    ([WEATHER, {"type": "custom", "custom": {"name": "apply_patch"}}], "tools[1]"),
    ([{"type": "function", "function": {"description": "no name"}}], "tools[0].function.name"),
    ([{"type": "function"}], "tools[0].function.name"), (["get_weather"], "tools[0]"), ({"a": 1}, "tools"),
])
def test_tools_that_cannot_be_sent_are_refused_with_their_place(tools, where):
    assert where in refused(request(tools=tools)).message


@pytest.mark.parametrize("choice, expected", [
    ("auto", "auto"), ("none", "none"), ("required", "required"),
    ({"type": "function", "function": {"name": "get_weather"}}, {"type": "function", "name": "get_weather"}),
    ({"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
        {"type": "function", "function": {"name": "get_weather"}}]}},
     {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "get_weather"}]}),
])
def test_tool_choice(choice, expected):
    out = translated(request(tools=[WEATHER], tool_choice=choice, parallel_tool_calls=False))
    assert out["tool_choice"] == expected and out["parallel_tool_calls"] is False
    assert list(out)[:5] == ["model", "input", "tools", "tool_choice", "parallel_tool_calls"]
    assert_sdk_fields(out)


@pytest.mark.parametrize("choice", [
    {"type": "function", "function": {"name": "not_offered"}}, {"type": "custom", "custom": {"name": "get_weather"}},
    {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}},
    {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [{"type": "custom", "custom": {}}]}},
    "any", {"type": "function"},
])
def test_tool_choices_that_cannot_be_honoured_are_refused(choice):
    error = refused(request(tools=[WEATHER], tool_choice=choice))
    assert error.code == "unsupported_parameter" and "tool_choice" in error.message


def test_without_tools_tool_choice_auto_or_none_and_parallel_tool_calls_are_left_out():
    for choice in ("auto", "none"):
        out = translated(request(tool_choice=choice, parallel_tool_calls=True))
        assert "tool_choice" not in out and "parallel_tool_calls" not in out and "tools" not in out
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        assert "tool_choice" in refused(request(tool_choice=choice)).message
    assert "tools" not in translated(request(tools=[]))


# -- messages ---------------------------------------------------------------------------------------------------------

def test_leading_system_and_developer_messages_become_instructions():
    out = translated(request({"role": "system", "content": "You are terse."},
                             {"role": "developer", "content": [{"type": "text", "text": "Use French."},
                                                               {"type": "text", "text": "No emoji."}]},
                             user("hi"), {"role": "system", "content": "Reminder: be terse."}))
    assert out["instructions"] == "You are terse.\n\nUse French.\nNo emoji."
    assert out["input"] == [text_message("user", "hi"), text_message("system", "Reminder: be terse.")]
    assert list(out)[:3] == ["model", "instructions", "input"]


def test_a_developer_message_after_the_first_user_message_stays_in_input_with_its_role():
    out = translated(request(user("a"), {"role": "developer", "content": "b"}, user("c")))
    assert "instructions" not in out
    assert [item["role"] for item in out["input"]] == ["user", "developer", "user"]


def test_empty_leading_system_messages_give_no_instructions():
    out = translated(request({"role": "system", "content": ""}, {"role": "system", "content": "x"}, user("hi")))
    assert out["instructions"] == "x"
    assert "instructions" not in translated(request({"role": "system", "content": ""}, user("hi")))


def test_system_messages_with_nothing_after_them_stay_in_input():
    for after in ([], [assistant("")]):
        out = translated(request({"role": "system", "content": "Say hello."}, *after))
        assert "instructions" not in out and out["input"] == [text_message("system", "Say hello.")]


def test_user_content_strings_and_parts():
    out = translated(request(user("one"), user([
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
        {"type": "image_url", "image_url": "https://example.com/b.png"},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"}},
        {"type": "file", "file": {"file_id": "file-1"}},
        {"type": "text", "text": "cached", "prompt_cache_breakpoint": {"mode": "explicit"}}])))
    assert out["input"] == [text_message("user", "one"), {"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "look"},
        {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "auto"},
        {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"},
        {"type": "input_image", "image_url": "https://example.com/b.png", "detail": "auto"},
        {"type": "input_file", "file_data": "data:application/pdf;base64,JVBE", "filename": "a.pdf"},
        {"type": "input_file", "file_id": "file-1"},
        {"type": "input_text", "text": "cached", "prompt_cache_breakpoint": {"mode": "explicit"}}]}]
    assert_sdk_fields(out)


@pytest.mark.parametrize("part, words", [
    ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}, "'input_audio'"),
    ({"type": "image_url", "image_url": {}}, "url"), ({"type": "file", "file": {"filename": "a"}}, "file_data"),
    ({"type": "text"}, "'text'"), ({"type": "video"}, "'video'"),
])
def test_user_parts_without_an_equivalent_are_refused_with_their_place(part, words):
    error = refused(request(user("hi"), user([part])))
    assert "messages[1].content" in error.message and words in error.message


def test_an_assistant_message_gives_output_text_then_its_calls():
    out = translated(request(user("weather?"), assistant("Checking.", tool_calls=[tool_call("c1"), tool_call(
        "c2", arguments='{"city":"Rome"}')]), tool("c1"), tool("c2", "rain"), assistant("Sunny and rain.")))
    assert out["input"][1:] == [
        text_message("assistant", "Checking.", kind="output_text"),
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": '{"city":"Rome"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "c2", "output": "rain"},
        text_message("assistant", "Sunny and rain.", kind="output_text")]
    assert_sdk_fields(out)


def test_an_assistant_message_with_empty_content_and_calls_gives_only_the_calls():
    for content in (None, "", []):
        out = translated(request(user("x"), assistant(content, tool_calls=[tool_call("c1")]), tool("c1")))
        assert [item["type"] for item in out["input"]] == ["message", "function_call", "function_call_output"]


def test_an_assistant_message_with_nothing_in_it_is_left_out(caplog):
    with caplog.at_level(logging.DEBUG, logger="retry_shield.responses_request"):
        out = translated(request(user("x"), assistant(""), assistant(None, tool_calls=[]), user("y")))
    assert out["input"] == [text_message("user", "x"), text_message("user", "y")]
    assert "neither text nor calls" in caplog.text


def test_assistant_parts_and_refusals_become_output_text_and_refusal_parts():
    out = translated(request(user("x"), assistant([{"type": "text", "text": "a"}, {"type": "text", "text": ""},
                                                   {"type": "refusal", "refusal": "no"}]),
                             user("y"), assistant(None, refusal="I can't help with that.")))
    assert out["input"][1]["content"] == [{"type": "output_text", "text": "a"}, {"type": "refusal", "refusal": "no"}]
    assert out["input"][3] == {"type": "message", "role": "assistant",
                               "content": [{"type": "refusal", "refusal": "I can't help with that."}]}
    assert_sdk_fields(out)


def test_reasoning_content_and_names_are_left_out(caplog):
    with caplog.at_level(logging.DEBUG, logger="retry_shield.responses_request"):
        out = translated(request(dict(user("x"), name="alice"),
                                 assistant("42", reasoning_content="Let me think.", name="bot")))
    assert out["input"] == [text_message("user", "x"), text_message("assistant", "42", kind="output_text")]
    assert "reasoning_content left out" in caplog.text


def test_arguments_that_are_not_a_string_are_json_encoded():
    calls = [{"id": "a", "type": "function", "function": {"name": "f", "arguments": {"city": "Zürich"}}},
             {"id": "b", "function": {"name": "f"}}]
    out = translated(request(user("x"), assistant(None, tool_calls=calls), tool("a"), tool("b")))
    assert [item["arguments"] for item in out["input"][1:3]] == ['{"city": "Zürich"}', "{}"]


def test_tool_messages_become_function_call_outputs():
    out = translated(request(user("x"), assistant(None, tool_calls=[tool_call("a"), tool_call("b"), tool_call("c")]),
                             tool("a", [{"type": "text", "text": "line 1"}, {"type": "text", "text": "line 2"}]),
                             tool("b", None),
                             tool("c", [{"type": "text", "text": "see"},
                                        {"type": "image_url", "image_url": {"url": "https://example.com/p.png"}}])))
    assert [item["output"] for item in out["input"][4:]] == [
        "line 1\nline 2", "",
        [{"type": "input_text", "text": "see"},
         {"type": "input_image", "image_url": "https://example.com/p.png", "detail": "auto"}]]
    assert_sdk_fields(out)


@pytest.mark.parametrize("message, words, code", [
    ({"role": "function", "name": "f", "content": "x"}, "legacy function messages", "unsupported_content"),
    ({"role": "critic", "content": "x"}, "'critic'", "invalid_request"),
    ({"role": "tool", "content": "x"}, "tool_call_id", "invalid_request"),
    (assistant(None, function_call={"name": "f", "arguments": "{}"}), "function_call", "unsupported_content"),
    (assistant(None, audio={"id": "audio_1"}), "audio", "unsupported_content"),
    (assistant(None, tool_calls=[{"id": "a", "type": "custom", "custom": {"name": "p", "input": "x"}}]),
     "'custom'", "unsupported_content"),
    (assistant(None, tool_calls=[{"type": "function", "function": {"name": "f"}}]), "id", "invalid_request"),
    (assistant(None, tool_calls=[{"id": "a", "function": {}}]), "function.name", "invalid_request"),
    (assistant(None, tool_calls={"id": "a"}), "tool_calls must be a list", "invalid_request"),
    (assistant([{"type": "image_url", "image_url": {"url": "u"}}]), "'image_url'", "unsupported_content"),
    (assistant(7), "content must be", "invalid_request"),
    (user(None), "content must be", "invalid_request"),
    ({"role": "system", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}, "'image_url'",
     "unsupported_content"),
])
def test_messages_that_cannot_be_translated_are_refused_with_their_place(message, words, code):
    messages = [message, user("next")] if message.get("role") == "system" else [user("first"), message]
    error = refused(request(*messages))
    assert "messages[%d]" % (0 if message.get("role") == "system" else 1) in error.message
    assert words in error.message and error.code == code


@pytest.mark.parametrize("messages", [None, [], "hi", [user("x"), "y"], [assistant("")]])
def test_messages_that_hold_nothing_to_send_are_refused(messages):
    assert "messages" in refused({"model": "m", "messages": messages}).message


# -- stability --------------------------------------------------------------------------------------------------------

def full_request():
    return request({"role": "system", "content": "sys"}, user("weather?"),
                   assistant("", tool_calls=[tool_call("c1")]), tool("c1"), assistant("Sunny."),
                   tools=[WEATHER], tool_choice="auto", parallel_tool_calls=True, temperature=0.3, top_p=1,
                   max_completion_tokens=500, reasoning_effort="low", user="u", metadata={"a": "b"},
                   response_format={"type": "json_object"}, verbosity="low", stream=True,
                   stream_options={"include_usage": True}, store=True, n=1)


def test_the_same_request_gives_the_same_bytes_whatever_the_order_of_its_keys():
    first = json.dumps(to_responses(full_request())[0])
    shuffled = list(full_request().items())
    for seed in range(5):
        random.Random(seed).shuffle(shuffled)
        assert json.dumps(to_responses(dict(shuffled))[0]) == first
    assert list(json.loads(first)) == ["model", "instructions", "input", "tools", "tool_choice", "parallel_tool_calls",
                                       "max_output_tokens", "reasoning", "text", "temperature", "top_p", "user",
                                       "metadata", "store", "stream"]


def test_the_request_is_not_changed():
    req = full_request()
    before = copy.deepcopy(req)
    to_responses(req)
    assert req == before


def test_a_longer_conversation_starts_with_the_shorter_ones_input():
    messages = full_request()["messages"]
    for end in range(2, len(messages)):
        shorter = translated(request(*messages[:end], tools=[WEATHER]))
        longer = translated(request(*messages, tools=[WEATHER]))
        assert longer["input"][:len(shorter["input"])] == shorter["input"]
        assert longer["instructions"] == shorter["instructions"]


texts = st.text(max_size=8)
parts = st.one_of(texts.map(lambda text: {"type": "text", "text": text}),
                  st.just({"type": "image_url", "image_url": {"url": "https://example.com/i.png"}}))
call_ids = st.sampled_from(["c1", "c2", "c3"])
chat_messages = st.one_of(
    st.builds(lambda role, text: {"role": role, "content": text}, st.sampled_from(["system", "developer"]), texts),
    st.builds(user, st.one_of(texts, st.lists(parts, min_size=1, max_size=3))),
    st.builds(lambda content, ids: assistant(content, tool_calls=[tool_call(one) for one in ids]),
              st.one_of(st.none(), texts), st.lists(call_ids, max_size=2)),
    st.builds(tool, call_ids, texts),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(chat_messages, min_size=1, max_size=8).filter(
    lambda messages: any(message["role"] != "assistant" for message in messages)))
def test_any_conversation_translates_to_sdk_shaped_items_in_order(messages):
    out, plan = to_responses(request(*messages, tools=[WEATHER]))
    assert_sdk_fields(out)
    assert json.dumps(out) == json.dumps(to_responses(copy.deepcopy(request(*messages, tools=[WEATHER])))[0])
    calls = [call["id"] for message in messages for call in message.get("tool_calls") or []]
    assert [item["call_id"] for item in out["input"] if item["type"] == "function_call"] == calls
    outputs = [message["tool_call_id"] for message in messages if message["role"] == "tool"]
    assert [item["call_id"] for item in out["input"] if item["type"] == "function_call_output"] == outputs


# -- real clients -----------------------------------------------------------------------------------------------------

def sdk_request(call):
    """The JSON body the official openai SDK sends for `call(client)`, taken from a socket-free transport."""
    seen = []

    def answer(sent):
        seen.append(json.loads(sent.content))
        return httpx2.Response(400, json={"error": {"message": "captured", "type": "invalid_request_error"}})

    client = openai.OpenAI(api_key="dummy", base_url="http://127.0.0.1:9/v1", max_retries=0,
                           http_client=httpx2.Client(transport=httpx2.MockTransport(answer)))
    with pytest.raises(openai.BadRequestError):
        call(client)
    return seen[0]


def test_the_openai_sdk_streaming_with_tools_and_usage():
    body = sdk_request(lambda client: client.chat.completions.create(
        model="gpt-5-codex", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "developer", "content": "Answer with a tool when you can."},
                  {"role": "user", "content": "Weather in Paris?"},
                  {"role": "assistant", "content": None, "tool_calls": [tool_call("call_abc")]},
                  {"role": "tool", "tool_call_id": "call_abc", "content": '{"temp": 21}'}],
        tools=[WEATHER], tool_choice="auto", parallel_tool_calls=True, max_completion_tokens=2048,
        reasoning_effort="medium"))
    out, plan = to_responses(body)
    assert plan == ResponsesPlan("gpt-5-codex", True, frozenset({"get_weather"}))
    assert out["instructions"] == "Answer with a tool when you can."
    assert [item["type"] for item in out["input"]] == ["message", "function_call", "function_call_output"]
    assert out["max_output_tokens"] == 2048 and out["reasoning"] == {"effort": "medium"}
    assert out["tools"][0]["strict"] is False
    assert_sdk_fields(out)


def test_the_openai_sdk_non_streaming_parse_with_a_pydantic_schema():
    pydantic = pytest.importorskip("pydantic")

    class Weather(pydantic.BaseModel):
        city: str
        celsius: float

    body = sdk_request(lambda client: client.chat.completions.parse(
        model="gpt-5-codex", messages=[{"role": "user", "content": "Paris?"}], response_format=Weather,
        tools=[openai.pydantic_function_tool(Weather, name="report")]))
    out, plan = to_responses(body)
    assert body["stream"] is False and out["stream"] is True and plan.include_usage is False
    fmt = out["text"]["format"]
    assert fmt["type"] == "json_schema" and fmt["name"] == "Weather" and fmt["strict"] is True
    assert fmt["schema"]["required"] == ["city", "celsius"]
    assert out["tools"][0]["name"] == "report" and out["tools"][0]["strict"] is True
    assert_sdk_fields(out)


def test_the_openai_sdk_with_an_image_and_a_json_object_answer():
    body = sdk_request(lambda client: client.chat.completions.create(
        model="gpt-5", messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is in it? Answer in JSON."},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/", "detail": "high"}}]}],
        response_format={"type": "json_object"}, n=1, temperature=1, user="me"))
    out = translated(body)
    assert out["input"][0]["content"][1] == {"type": "input_image", "image_url": "data:image/jpeg;base64,/9j/",
                                             "detail": "high"}
    assert out["text"] == {"format": {"type": "json_object"}} and out["user"] == "me"
    assert_sdk_fields(out)


def test_the_openai_sdk_asking_for_logprobs_is_refused():
    body = sdk_request(lambda client: client.chat.completions.create(
        model="gpt-5", messages=[{"role": "user", "content": "hi"}], logprobs=True, top_logprobs=2))
    assert "'logprobs'" in refused(body).message


def llm_cli_request():
    """What the `llm` CLI (its default OpenAI plugin) sends for a second turn after a tool call, with a
    schema and a PDF and image attachment: a system message, the earlier turn's text and its tool calls
    as separate assistant messages, the tool results in the next prompt, stream_options always."""
    return {
        "model": "gpt-5-codex",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What time is it in Paris?"},
            {"role": "assistant", "tool_calls": [{"type": "function", "id": "call_1", "function": {
                "name": "llm_time", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"utc_time": "2026-11-30 12:00:00 UTC"}'},
            {"role": "assistant", "content": "It is 13:00 in Paris."},
            {"role": "user", "content": [
                {"type": "text", "text": "Summarise these."},
                {"type": "file", "file": {"filename": "a1b2.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
        ],
        "stream": True,
        "tools": [{"type": "function", "function": {"name": "llm_time", "description": None,
                                                    "parameters": {"properties": {}, "type": "object"}}}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "output", "schema": {
            "type": "object", "properties": {"summary": {"type": "string"}}}}},
        "temperature": 0.7, "max_tokens": 800, "stream_options": {"include_usage": True},
    }


def test_the_llm_cli():
    out, plan = to_responses(llm_cli_request())
    assert plan.include_usage is True and plan.tool_names == frozenset({"llm_time"})
    assert out["instructions"] == "You are a helpful assistant."
    assert [(item["type"], item.get("role")) for item in out["input"]] == [
        ("message", "user"), ("function_call", None), ("function_call_output", None), ("message", "assistant"),
        ("message", "user")]
    assert out["input"][4]["content"][1] == {"type": "input_file", "file_data": "data:application/pdf;base64,JVBERi0x",
                                             "filename": "a1b2.pdf"}
    assert out["tools"] == [{"type": "function", "name": "llm_time", "parameters": {"properties": {}, "type": "object"},
                             "strict": False}]
    assert out["text"]["format"]["name"] == "output" and out["text"]["format"]["strict"] is False
    assert out["max_output_tokens"] == 800 and out["temperature"] == 0.7
    assert_sdk_fields(out)


def test_the_llm_cli_options_without_an_equivalent_are_refused():
    for option, value in (("stop", "\n\n"), ("seed", 7), ("frequency_penalty", 0.5), ("logit_bias", {"1712": -100})):
        assert repr(option) in refused(dict(llm_cli_request(), **{option: value})).message


def aider_request():
    """What Aider sends through litellm (model settings with a system reminder, `reasoning_effort` merged from
    extra_body): system prompt, example and history pairs, the files as user / assistant pairs, the
    request, then the reminder as a trailing system message; temperature 0 when the model takes one."""
    return {
        "model": "gpt-5-codex",
        "messages": [
            {"role": "system", "content": "Act as an expert software developer.\nAlways use best practices."},
            {"role": "user", "content": "Change get_factorial() to use math.factorial"},
            {"role": "assistant", "content": "To make this change we need to modify `mathweb/flask/app.py`."},
            {"role": "user", "content": "I switched to a new code base. Please don't consider the above files."},
            {"role": "assistant", "content": "Ok."},
            {"role": "user", "content": "Here are summaries of some files present in my git repository.\n\napp.py:"},
            {"role": "assistant", "content": "Ok, I won't try and edit those files without asking first."},
            {"role": "user", "content": [
                {"type": "text", "text": "Image file: shot.png"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
            {"role": "assistant", "content": "Ok."},
            {"role": "user", "content": "Add a --verbose flag to cli.py"},
            {"role": "system", "content": "# SEARCH/REPLACE block Rules:\nEvery *SEARCH/REPLACE block* must use this"},
        ],
        "stream": True,
        "temperature": 0,
        "reasoning_effort": "high",
    }


def test_aider():
    out, plan = to_responses(aider_request())
    assert out["instructions"].startswith("Act as an expert")
    assert [item["role"] for item in out["input"]] == ["user", "assistant"] * 4 + ["user", "system"]
    assert out["input"][-1] == text_message("system", aider_request()["messages"][-1]["content"])
    assert out["temperature"] == 0 and out["reasoning"] == {"effort": "high"} and plan.include_usage is False
    assert_sdk_fields(out)


def test_aider_with_a_function_edit_format_forces_its_one_tool():
    function = {"name": "write_file", "description": "create or update one file", "parameters": {
        "type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
        "required": ["path", "content"], "additionalProperties": False}}
    out = translated(dict(aider_request(), tools=[{"type": "function", "function": function}],
                          tool_choice={"type": "function", "function": {"name": "write_file"}}))
    assert out["tool_choice"] == {"type": "function", "name": "write_file"}
    assert out["tools"][0]["parameters"] is function["parameters"] and out["tools"][0]["strict"] is False


def test_aider_on_ollama_sends_num_ctx_which_is_refused():
    assert "'num_ctx'" in refused(dict(aider_request(), num_ctx=40000)).message
