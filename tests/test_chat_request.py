"""The Responses -> Chat Completions request translation, socket-free: recorded Codex 0.169 requests, built ones."""

import copy
import json
import logging
import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retry_shield.chat_request import NO_OUTPUT, to_chat
from retry_shield.errors import ClientError

CAPTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "captures")
CHAT_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
RESPONSES_ONLY = ("store", "include", "prompt_cache_key", "client_metadata", "metadata", "truncation", "service_tier",
                  "text", "reasoning", "input", "instructions", "max_output_tokens", "previous_response_id")


def capture(name):
    with open(os.path.join(CAPTURES, "codex-0.169-%s.json" % name), encoding="utf-8") as f:
        return json.load(f)


def messages_of(request):
    return to_chat(request)[0]["messages"]


def user(text):
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def assistant(text):
    return {"type": "message", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def call(call_id, name="exec_command", arguments='{"cmd":"ls"}', **extra):
    return dict({"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments}, **extra)


def output(call_id, text="done", kind="function_call_output"):
    return {"type": kind, "call_id": call_id, "output": text}


def reasoning(text, summary="sum"):
    return {"type": "reasoning", "id": "rs", "summary": [{"type": "summary_text", "text": summary}],
            "content": [{"type": "reasoning_text", "text": text}], "encrypted_content": None}


FUNCTION = {"type": "function", "name": "exec_command", "description": "Run", "strict": False,
            "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}}


def request(*items, **fields):
    return dict({"model": "m", "input": list(items), "tools": [FUNCTION]}, **fields)


def assert_valid_chat(messages):
    """What chat servers check: every tool message answers a call of the assistant message just before its run
    of tool messages, and every call there is answered exactly once."""
    waiting = None
    for message in messages:
        if message["role"] == "tool":
            assert waiting is not None and message["tool_call_id"] in waiting, message
            waiting.remove(message["tool_call_id"])
            continue
        assert not waiting, "calls left without a tool message: %s" % waiting
        waiting = None
        if message["role"] == "assistant" and message.get("tool_calls"):
            waiting = [tool_call["id"] for tool_call in message["tool_calls"]]
    assert not waiting, "calls left without a tool message: %s" % waiting


def assert_sdk_fields(chat):
    """Field names as openai-python's Chat Completions params name them (reasoning_content is DeepSeek's)."""
    from openai.types.chat import completion_create_params as params
    from openai.types import chat as types
    from openai.types.shared_params import FunctionDefinition

    def fields(typed_dict, *extra):
        names = set(extra)
        for klass in typed_dict.__mro__:
            names.update(getattr(klass, "__annotations__", {}))
        return names

    assert set(chat) <= fields(params.CompletionCreateParamsStreaming)
    roles = {"system": types.ChatCompletionSystemMessageParam, "user": types.ChatCompletionUserMessageParam,
             "assistant": types.ChatCompletionAssistantMessageParam, "tool": types.ChatCompletionToolMessageParam}
    for message in chat["messages"]:
        assert set(message) <= fields(roles[message["role"]], "reasoning_content"), message
        for tool_call in message.get("tool_calls") or []:
            assert set(tool_call) <= fields(types.ChatCompletionMessageFunctionToolCallParam)
            assert set(tool_call["function"]) == {"name", "arguments"}
        if isinstance(message["content"], list):
            for part in message["content"]:
                kind = {"text": types.ChatCompletionContentPartTextParam,
                        "image_url": types.ChatCompletionContentPartImageParam}[part["type"]]
                assert set(part) <= fields(kind)
    for tool in chat.get("tools") or []:
        assert set(tool) <= fields(types.ChatCompletionFunctionToolParam)
        assert set(tool["function"]) <= fields(FunctionDefinition) and CHAT_NAME.match(tool["function"]["name"])


# -- what Codex 0.169 really sends ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gpt-5-codex", "gpt-5-codex-namespaced-call", "gpt-5.5", "gpt-6-sol"])
def test_every_recorded_codex_request_translates_to_a_valid_chat_request(name):
    for recorded in capture(name)["requests"]:
        chat, plan = to_chat(recorded)
        assert_valid_chat(chat["messages"])
        assert_sdk_fields(chat)
        assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
        assert not set(RESPONSES_ONLY) & set(chat)
        assert chat["model"] == plan.model == recorded["model"]
        assert plan.echo["store"] is False and plan.echo["previous_response_id"] is None
        assert plan.echo["tools"] is recorded.get("tools") and plan.echo["reasoning"] == recorded["reasoning"]
        assert all(message["role"] != "developer" for message in chat["messages"])


@pytest.mark.parametrize("name", ["gpt-5-codex", "gpt-5-codex-namespaced-call", "gpt-5.5", "gpt-6-sol"])
def test_each_codex_turn_starts_with_the_messages_of_the_turn_before(name):
    requests = capture(name)["requests"]
    for before, after in zip(requests, requests[1:]):
        assert after["input"][:len(before["input"])] == before["input"]  # Codex's own input is an extension
        first, second = to_chat(before)[0], to_chat(after)[0]
        assert second["messages"][:len(first["messages"])] == first["messages"]
        assert len(second["messages"]) > len(first["messages"])
        assert second["tools"] == first["tools"]
        dumped = json.dumps(second["messages"][:len(first["messages"])], ensure_ascii=False)
        assert dumped == json.dumps(first["messages"], ensure_ascii=False)


def test_codex_gpt_5_codex_tool_round_trip(caplog):
    caplog.set_level(logging.DEBUG, logger="retry_shield")
    turn1, turn2 = capture("gpt-5-codex")["requests"]
    chat, plan = to_chat(turn2)
    names = [tool["function"]["name"] for tool in chat["tools"]]
    assert names[:4] == ["exec_command", "write_stdin", "request_user_input", "view_image"]
    assert "multi_agent_v1__spawn_agent" in names and plan.namespaced["multi_agent_v1__spawn_agent"] == (
        "multi_agent_v1", "spawn_agent")
    assert not any("web_search" in name for name in names)
    assert "tools without a chat equivalent not sent: web_search" in caplog.text
    exec_tool = chat["tools"][0]["function"]
    assert exec_tool["strict"] is False and exec_tool["parameters"]["required"] == ["cmd"]
    roles = [message["role"] for message in chat["messages"]]
    assert roles == ["system", "system", "user", "user", "assistant", "tool"]
    assert chat["messages"][0]["content"].startswith("You are a coding agent running in the Codex CLI")
    assert chat["messages"][3] == {"role": "user", "content": "Create f.txt containing hi."}
    reply, result = chat["messages"][4:]
    assert reply == {"role": "assistant", "content": None, "reasoning_content": "Thinking step 1 about the task.",
                     "tool_calls": [{"id": "call_one", "type": "function",
                                     "function": {"name": "exec_command", "arguments": '{"cmd": "echo hi > f.txt"}'}}]}
    assert result["tool_call_id"] == "call_one" and "Process exited with code 0" in result["content"]
    assert plan.call_ids == {"call_one"} and plan.custom_tools == frozenset()
    assert (chat["tool_choice"], chat["parallel_tool_calls"]) == ("auto", True)
    assert "reasoning_effort" not in chat  # Codex sent reasoning.summary only


def test_codex_namespaced_call_uses_the_flattened_name():
    chat, plan = to_chat(capture("gpt-5-codex-namespaced-call")["requests"][1])
    tool_call = chat["messages"][4]["tool_calls"][0]
    assert tool_call["function"]["name"] == "multi_agent_v1__close_agent"
    assert plan.namespaced["multi_agent_v1__close_agent"] == ("multi_agent_v1", "close_agent")


def test_codex_gpt_5_5_apply_patch_is_a_custom_tool_with_its_text_as_input():
    recorded = capture("gpt-5.5")
    chat, plan = to_chat(recorded["requests"][2])
    assert plan.custom_tools == {"apply_patch"}
    apply_patch = [tool["function"] for tool in chat["tools"] if tool["function"]["name"] == "apply_patch"][0]
    assert apply_patch["parameters"]["required"] == ["input"]
    assert apply_patch["parameters"]["properties"]["input"]["type"] == "string"
    description = apply_patch["description"].split("\n")
    assert description[0].startswith("The `apply_patch` tool can be used to edit files.")
    assert description[-1].startswith("Freeform input; grammar (lark): start: begin_patch hunk+ end_patch begin_patch:")
    assert not any(tool["function"]["name"] == "tool_search" for tool in chat["tools"])
    patch_call = chat["messages"][-2]["tool_calls"][0]
    sent_input = recorded["answers"][1][1]["input"]
    assert json.loads(patch_call["function"]["arguments"]) == {"input": sent_input}
    assert patch_call["function"]["arguments"] == json.dumps({"input": sent_input}, ensure_ascii=False)
    assert chat["messages"][-2]["reasoning_content"] == "Thinking step 2 about the task."
    assert chat["messages"][-1]["content"].startswith("Exit code: 0")
    assert chat["reasoning_effort"] == "medium" and "verbosity" not in chat
    assert plan.call_ids == {"call_one", "call_two"} and plan.echo["text"] == {"verbosity": "low"}


def test_codex_gpt_6_tools_come_from_additional_tools_and_are_never_a_message():
    turn1, turn2 = capture("gpt-6-sol")["requests"]
    assert "tools" not in turn1 and turn1["input"][0]["type"] == "additional_tools"
    chat, plan = to_chat(turn2)
    names = [tool["function"]["name"] for tool in chat["tools"]]
    assert names[:2] == ["functions__exec", "functions__wait"] and "clock__sleep" in names
    assert plan.custom_tools == {"functions__exec"} and plan.namespaced["functions__exec"] == ("functions", "exec")
    assert [message["role"] for message in chat["messages"]][:4] == ["system"] * 4
    assert not any("additional_tools" in json.dumps(message) for message in chat["messages"])
    assert chat["parallel_tool_calls"] is False and chat["tool_choice"] == "auto"
    exec_call, exec_result = chat["messages"][-2:]
    assert exec_call["tool_calls"][0]["function"]["name"] == "functions__exec"
    assert json.loads(exec_call["tool_calls"][0]["function"]["arguments"])["input"].startswith('notify("starting");')
    # two outputs for one call (a list of input_text parts, then exec's notify): one tool message
    assert exec_result["tool_call_id"] == "call_exec"
    assert exec_result["content"].startswith("Script completed\nWall time")
    assert exec_result["content"].endswith('"output":""}\nstarting')


# -- stable bytes -----------------------------------------------------------------------------------------------------

def test_the_same_request_always_gives_the_same_bytes():
    recorded = capture("gpt-5.5")["requests"][2]
    first = json.dumps(to_chat(recorded)[0], ensure_ascii=False)
    again = json.dumps(to_chat(json.loads(json.dumps(recorded)))[0], ensure_ascii=False)
    reordered = dict(reversed(list(copy.deepcopy(recorded).items())))
    assert first == again == json.dumps(to_chat(reordered)[0], ensure_ascii=False)


def test_translation_leaves_the_request_as_it_was():
    recorded = capture("gpt-6-sol")["requests"][1]
    kept = copy.deepcopy(recorded)
    to_chat(recorded)
    assert recorded == kept


# -- messages ---------------------------------------------------------------------------------------------------------

def test_instructions_and_system_and_developer_messages_become_system_messages_in_place():
    items = [{"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "dev"}]},
             user("hi"), {"role": "system", "content": "sys"}, user("again")]
    assert messages_of(request(*items, instructions="rules")) == [
        {"role": "system", "content": "rules"}, {"role": "system", "content": "dev"},
        {"role": "user", "content": "hi"}, {"role": "system", "content": "sys"}, {"role": "user", "content": "again"}]


def test_a_string_input_is_one_user_message():
    assert messages_of({"model": "m", "input": "hello"}) == [{"role": "user", "content": "hello"}]


def test_user_content_is_a_string_when_text_only_else_text_and_image_parts():
    text_only = {"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "text", "text": "b"}]}
    assert messages_of(request(text_only))[0]["content"] == "a\nb"
    mixed = {"role": "user", "content": [
        {"type": "input_text", "text": "look"},
        {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "high"},
        {"type": "input_image", "image_url": "https://example.com/a.png"}]}
    assert messages_of(request(mixed))[0]["content"] == [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]


def test_an_image_given_only_by_file_id_is_a_clear_client_error():
    only_file = {"role": "user", "content": [{"type": "input_image", "file_id": "file-1", "detail": "auto"}]}
    with pytest.raises(ClientError) as caught:
        to_chat(request(only_file))
    assert caught.value.status == 400 and "file-1" in caught.value.message and "image_url" in caught.value.message


def test_assistant_content_is_the_plain_string_of_its_texts():
    reply = {"type": "message", "role": "assistant", "content": [
        {"type": "output_text", "text": "one", "annotations": []}, {"type": "output_text", "text": "two"}]}
    assert messages_of(request(user("q"), reply))[1] == {"role": "assistant", "content": "one\ntwo"}


def test_calls_and_a_preceding_assistant_message_merge_into_one_assistant_message():
    items = [user("q"), reasoning("think"), assistant("Let me look."),
             call("c1", arguments='{"cmd":"ls"}'), call("c2", arguments='{"cmd":"pwd"}'),
             output("c2", "second"), output("c1", "first")]
    assert messages_of(request(*items))[1:] == [
        {"role": "assistant", "content": "Let me look.", "reasoning_content": "think", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "exec_command", "arguments": '{"cmd":"ls"}'}},
            {"id": "c2", "type": "function", "function": {"name": "exec_command", "arguments": '{"cmd":"pwd"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "first"},
        {"role": "tool", "tool_call_id": "c2", "content": "second"}]


def test_a_call_after_outputs_starts_a_new_assistant_message():
    messages = messages_of(request(user("q"), call("c1"), output("c1"), call("c2"), output("c2")))
    assert [(message["role"], len(message.get("tool_calls") or [])) for message in messages] == [
        ("user", 0), ("assistant", 1), ("tool", 0), ("assistant", 1), ("tool", 0)]


def test_list_outputs_join_their_text_parts():
    listed = {"type": "function_call_output", "call_id": "c1", "output": [
        {"type": "input_text", "text": "line 1"}, {"type": "input_image", "image_url": "data:,"},
        {"type": "input_text", "text": "line 2"}]}
    assert messages_of(request(user("q"), call("c1"), listed))[-1]["content"] == "line 1\nline 2"


def test_custom_tool_calls_carry_their_text_as_input_arguments():
    custom = {"type": "custom", "name": "apply_patch", "description": "Patch files.",
              "format": {"type": "grammar", "syntax": "lark", "definition": "start: x\n  x: \"a\"\n"}}
    items = [user("q"), {"type": "custom_tool_call", "call_id": "c1", "name": "apply_patch", "input": "é\n\"x\""},
             output("c1", "Success.", kind="custom_tool_call_output")]
    chat, plan = to_chat(request(*items, tools=[custom]))
    assert chat["tools"] == [{"type": "function", "function": {
        "name": "apply_patch", "description": "Patch files.\nFreeform input; grammar (lark): start: x x: \"a\"",
        "parameters": {"type": "object", "properties": {"input": {
            "type": "string", "description": "The raw input text, not JSON-encoded."}},
            "required": ["input"], "additionalProperties": False}}}]
    assert chat["messages"][1]["tool_calls"][0]["function"] == {"name": "apply_patch",
                                                                "arguments": '{"input": "é\\n\\"x\\""}'}
    assert chat["messages"][2] == {"role": "tool", "tool_call_id": "c1", "content": "Success."}
    assert plan.custom_tools == {"apply_patch"}


def test_a_long_grammar_is_summarised_in_its_first_200_characters():
    custom = {"type": "custom", "name": "sql",
              "format": {"type": "grammar", "syntax": "regex", "definition": "a" * 500}}
    description = to_chat(request(user("q"), tools=[custom]))[0]["tools"][0]["function"]["description"]
    assert description == "Freeform input; grammar (regex): " + "a" * 200
    plain = {"type": "custom", "name": "note", "description": "Take a note.", "format": {"type": "text"}}
    assert to_chat(request(user("q"), tools=[plain]))[0]["tools"][0]["function"]["description"] == "Take a note."


def test_namespaced_calls_use_the_flattened_name():
    namespace = {"type": "namespace", "name": "multi_agent_v1", "description": "Agents.",
                 "tools": [dict(FUNCTION, name="spawn_agent")]}
    items = [user("q"), call("c1", name="spawn_agent", namespace="multi_agent_v1"), output("c1")]
    chat, plan = to_chat(request(*items, tools=[FUNCTION, namespace]))
    assert chat["messages"][1]["tool_calls"][0]["function"]["name"] == "multi_agent_v1__spawn_agent"
    assert plan.namespaced == {"multi_agent_v1__spawn_agent": ("multi_agent_v1", "spawn_agent")}


def test_an_orphan_output_is_dropped_and_a_call_without_output_gets_no_output(caplog):
    caplog.set_level(logging.DEBUG, logger="retry_shield")
    items = [user("q"), output("ghost"), call("c1"), user("stop"), output("c1", "too late")]
    messages = messages_of(request(*items))
    assert messages == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "exec_command", "arguments": '{"cmd":"ls"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": NO_OUTPUT},
        {"role": "user", "content": "stop"}]
    assert_valid_chat(messages)
    assert "tool output for call ghost dropped" in caplog.text
    assert "call c1 has no output" in caplog.text and "tool output for call c1 dropped" in caplog.text
    assert all(record.levelno == logging.DEBUG for record in caplog.records)


def test_a_call_at_the_end_of_the_input_gets_no_output():
    assert messages_of(request(user("q"), call("c1")))[-1] == {"role": "tool", "tool_call_id": "c1",
                                                                "content": NO_OUTPUT}


def test_several_outputs_for_one_call_become_one_tool_message():
    messages = messages_of(request(user("q"), call("c1"), output("c1", "main"), output("c1", "note")))
    assert messages[-1] == {"role": "tool", "tool_call_id": "c1", "content": "main\nnote"}


def test_reasoning_goes_on_the_assistant_message_it_belongs_to():
    items = [user("q"), reasoning("first"), call("c1"), output("c1"), reasoning("", summary="only a summary"),
             reasoning("more"), assistant("answer"), reasoning("orphan thought"), user("next")]
    messages = messages_of(request(*items))
    assert messages[1]["reasoning_content"] == "first"
    assert messages[3] == {"role": "assistant", "content": "answer", "reasoning_content": "only a summary\nmore"}
    assert messages[4] == {"role": "user", "content": "next"}  # reasoning without a message after it: dropped
    encrypted = {"type": "reasoning", "summary": [], "encrypted_content": "gAAA"}
    assert messages_of(request(user("q"), encrypted, assistant("a")))[1] == {"role": "assistant", "content": "a"}


# -- tools and options ------------------------------------------------------------------------------------------------

def test_function_tools_map_one_to_one_with_strict_only_when_set():
    bare = {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}
    strict = dict(bare, name="g", strict=True, description="G.")
    assert to_chat(request(user("q"), tools=[bare, strict]))[0]["tools"] == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}},
        {"type": "function", "function": {"name": "g", "description": "G.",
                                          "parameters": {"type": "object", "properties": {}}, "strict": True}}]


def test_namespace_names_are_sanitised_shortened_and_unique():
    long_name = "x" * 80
    tools = [dict(FUNCTION, name="ns__run"),
             {"type": "namespace", "name": "ns", "description": "", "tools": [dict(FUNCTION, name="run")]},
             {"type": "namespace", "name": "my.tools", "description": "", "tools": [dict(FUNCTION, name="a b")]},
             {"type": "namespace", "name": "n", "description": "", "tools": [dict(FUNCTION, name=long_name)]}]
    chat, plan = to_chat(request(user("q"), tools=tools))
    names = [tool["function"]["name"] for tool in chat["tools"]]
    assert names[:3] == ["ns__run", "ns__run_2", "my_tools__a_b"]
    assert len(names[3]) == 64 and names[3].startswith("n__xxx") and all(CHAT_NAME.match(name) for name in names)
    assert plan.namespaced == {"ns__run_2": ("ns", "run"), "my_tools__a_b": ("my.tools", "a b"),
                               names[3]: ("n", long_name)}
    items = [user("q"), call("c1", name="run", namespace="ns"), output("c1")]
    assert to_chat(request(*items, tools=tools))[0]["messages"][1]["tool_calls"][0]["function"]["name"] == "ns__run_2"


def test_built_in_tools_are_dropped_with_one_debug_line(caplog):
    caplog.set_level(logging.DEBUG, logger="retry_shield")
    built_in = [{"type": "web_search"}, {"type": "tool_search", "execution": "client"}, {"type": "file_search"},
                {"type": "image_generation"}, {"type": "local_shell"}]
    chat, _ = to_chat(request(user("q"), tools=[FUNCTION] + built_in, tool_choice="auto"))
    assert [tool["function"]["name"] for tool in chat["tools"]] == ["exec_command"]
    lines = [record.getMessage() for record in caplog.records]
    assert lines == ["tools without a chat equivalent not sent: web_search, tool_search, file_search, "
                     "image_generation, local_shell"]


def test_without_tools_left_tool_choice_and_parallel_tool_calls_are_not_sent():
    chat, _ = to_chat(request(user("q"), tools=[{"type": "web_search"}], tool_choice="auto", parallel_tool_calls=True))
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(chat)


def test_additional_tools_items_add_tools_and_are_not_messages():
    extra = {"type": "additional_tools", "id": "at_1", "role": "developer",
             "tools": [{"type": "namespace", "name": "clock", "description": "Time.",
                        "tools": [dict(FUNCTION, name="sleep")]}]}
    chat, plan = to_chat(request(extra, user("q")))
    assert [tool["function"]["name"] for tool in chat["tools"]] == ["exec_command", "clock__sleep"]
    assert chat["messages"] == [{"role": "user", "content": "q"}]


@pytest.mark.parametrize("choice, expected", [
    ("auto", "auto"), ("none", "none"), ("required", "required"),
    ({"type": "function", "name": "exec_command"}, {"type": "function", "function": {"name": "exec_command"}}),
    ({"type": "custom", "name": "apply_patch"}, {"type": "function", "function": {"name": "apply_patch"}}),
    ({"type": "function", "name": "sleep", "namespace": "clock"},
     {"type": "function", "function": {"name": "clock__sleep"}}),
    ({"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "exec_command"},
                                                             {"type": "web_search"}]},
     {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
         {"type": "function", "function": {"name": "exec_command"}}]}}),
])
def test_tool_choice_maps_to_chat(choice, expected):
    tools = [FUNCTION, {"type": "custom", "name": "apply_patch"},
             {"type": "namespace", "name": "clock", "description": "", "tools": [dict(FUNCTION, name="sleep")]}]
    assert to_chat(request(user("q"), tools=tools, tool_choice=choice))[0]["tool_choice"] == expected


def test_a_tool_choice_forcing_a_built_in_tool_is_a_client_error():
    with pytest.raises(ClientError) as caught:
        to_chat(request(user("q"), tool_choice={"type": "web_search_preview"}))
    assert (caught.value.status, caught.value.code) == (400, "unsupported_parameter")


def test_options_map_and_responses_only_fields_are_not_sent():
    chat, plan = to_chat(request(
        user("q"), instructions="be brief", max_output_tokens=300, temperature=0.2, top_p=0.9, user="u-1",
        reasoning={"effort": "high", "summary": "detailed"}, parallel_tool_calls=False, tool_choice="required",
        text={"format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"}, "strict": True},
              "verbosity": "low"},
        store=False, include=["reasoning.encrypted_content"], prompt_cache_key="k", client_metadata={"a": "b"},
        metadata={"x": "y"}, truncation="auto", service_tier="priority", stream=False))
    assert chat == {
        "model": "m", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q"}],
        "tools": chat["tools"], "tool_choice": "required", "parallel_tool_calls": False,
        "temperature": 0.2, "top_p": 0.9, "max_tokens": 300, "reasoning_effort": "high",
        "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"},
                                                                   "strict": True}},
        "user": "u-1", "stream": True, "stream_options": {"include_usage": True}}
    assert list(chat)[-2:] == ["stream", "stream_options"]
    assert plan.echo["metadata"] == {"x": "y"} and plan.echo["truncation"] == "auto"
    assert plan.echo["max_output_tokens"] == 300 and plan.echo["instructions"] == "be brief"
    assert plan.echo["tool_choice"] == "required" and plan.echo["text"]["verbosity"] == "low"


@pytest.mark.parametrize("fmt, expected", [
    ({"type": "json_object"}, {"type": "json_object"}),
    ({"type": "text"}, None),
])
def test_text_format_maps_to_response_format(fmt, expected):
    chat, _ = to_chat(request(user("q"), text={"format": fmt}))
    assert chat.get("response_format") == expected


def test_echo_is_none_where_absent_and_model_empty_without_one():
    chat, plan = to_chat({"input": "hi"})
    assert "model" not in chat and plan.model == ""
    assert set(plan.echo.values()) == {None} and "previous_response_id" in plan.echo and "tools" in plan.echo


def test_call_ids_are_those_already_in_the_conversation():
    _, plan = to_chat(request(user("q"), call("c1"), output("c1"), output("orphan")))
    assert plan.call_ids == {"c1", "orphan"}


def test_a_namespace_member_without_a_chat_equivalent_is_dropped(caplog):
    caplog.set_level(logging.DEBUG, logger="retry_shield")
    namespace = {"type": "namespace", "name": "ns", "description": "",
                 "tools": [{"type": "web_search"}, dict(FUNCTION, name="run")]}
    chat, plan = to_chat(request(user("q"), tools=[namespace]))
    assert [tool["function"]["name"] for tool in chat["tools"]] == ["ns__run"]
    assert plan.namespaced == {"ns__run": ("ns", "run")}
    assert "web_search in namespace ns" in caplog.text


def test_previous_response_id_cannot_be_honoured():
    with pytest.raises(ClientError) as caught:
        to_chat(request(user("q"), previous_response_id="resp_1"))
    assert (caught.value.status, caught.value.code) == (400, "unsupported_parameter")
    assert caught.value.message == ("previous_response_id cannot be honoured by a Chat Completions upstream; "
                                    "send the whole conversation as input (Codex does)")
    for field, value in (("conversation", "conv_1"), ("prompt", {"id": "pmpt_1"})):
        with pytest.raises(ClientError) as caught:
            to_chat(request(user("q"), **{field: value}))
        assert caught.value.code == "unsupported_parameter" and caught.value.message.startswith(field)


@pytest.mark.parametrize("item, words", [
    ({"type": "web_search_call", "id": "ws_1", "status": "completed"}, "web_search_call"),
    ({"type": "item_reference", "id": "msg_1"}, "item_reference"),
    ({"type": "message", "role": "critic", "content": "x"}, "critic"),
    ({"type": "message", "role": "user", "content": [{"type": "input_file", "file_id": "f"}]}, "input_file"),
    ({"type": "function_call", "name": "f", "arguments": "{}"}, "call_id"),
])
def test_what_cannot_be_translated_is_a_client_error_that_names_it(item, words):
    with pytest.raises(ClientError) as caught:
        to_chat(request(user("q"), item))
    assert caught.value.status == 400 and words in caught.value.message


def test_an_empty_request_is_a_client_error():
    with pytest.raises(ClientError):
        to_chat({"model": "m", "input": []})


# -- properties over Codex-like conversations -------------------------------------------------------------------------

STEP = st.one_of(
    st.tuples(st.just("user"), st.text(max_size=5)),
    st.tuples(st.just("turn"), st.booleans(), st.booleans(),
              st.lists(st.tuples(st.sampled_from(["plain", "custom", "namespaced"]), st.integers(1, 2)), max_size=3),
              st.booleans()),
)


def conversation(steps):
    """Codex-like input built step by step, and the item counts at which Codex would send a request.

    As with Codex, a turn without calls ends the exchange: a user message comes before the next turn (an assistant
    message that ends one request, followed directly by calls in the next, would merge with them); and every call
    has its output by the next request (Codex sends "aborted" for a call it cut short).
    """
    items, cuts, number, ended = [], [], 0, True
    for step in steps:
        if step[0] == "user" or ended:
            items.append(user(step[1] if step[0] == "user" else "go on"))
            ended = False
        if step[0] == "turn":
            _, thinks, says, calls, orphan = step
            ended = not calls
            if thinks:
                items.append(reasoning("thought %d" % number))
            if says:
                items.append(assistant("said %d" % number))
            outputs = []
            for kind, count in calls:
                number += 1
                call_id = "call_%d" % number
                if kind == "custom":
                    items.append({"type": "custom_tool_call", "call_id": call_id, "name": "apply_patch", "input": "p"})
                else:
                    namespaced = call(call_id, name="sleep", namespace="clock")
                    items.append(namespaced if kind == "namespaced" else call(call_id))
                kind_out = "custom_tool_call_output" if kind == "custom" else "function_call_output"
                outputs.extend(output(call_id, "out %d.%d" % (number, n), kind_out) for n in range(count))
            items.extend(reversed(outputs))
            if orphan:
                items.append(output("ghost_%d" % number))
        cuts.append(len(items))
    return items, cuts


@settings(max_examples=200, deadline=None)
@given(st.lists(STEP, min_size=1, max_size=8))
def test_every_request_of_a_session_extends_the_one_before_and_is_valid_chat(steps):
    items, cuts = conversation(steps)
    tools = [FUNCTION, {"type": "custom", "name": "apply_patch"},
             {"type": "namespace", "name": "clock", "description": "", "tools": [dict(FUNCTION, name="sleep")]}]
    before = None
    for cut in cuts:
        if cut == 0:
            continue
        chat, _ = to_chat(request(*items[:cut], tools=tools, instructions="rules"))
        assert_valid_chat(chat["messages"])
        dumped = json.dumps(chat, ensure_ascii=False)
        assert dumped == json.dumps(to_chat(request(*copy.deepcopy(items[:cut]), tools=tools,
                                                    instructions="rules"))[0], ensure_ascii=False)
        if before is not None:
            assert chat["messages"][:len(before)] == before
        before = chat["messages"]
    for cut in range(1, len(items) + 1):  # any cut, even one Codex would not send, is valid chat
        assert_valid_chat(to_chat(request(*items[:cut], tools=tools, instructions="rules"))[0]["messages"])
