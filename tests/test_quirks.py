"""Parameters a chat upstream refuses: learned from its 400, retried at once without them, remembered."""

import json

import pytest

from retry_shield.quirks import refused_parameter, without
from tests.fake_upstream import good, status
from tests.helpers import request

CHAT = {"model": "m", "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 5,
        "messages": [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}, "strict": True}}]}


def refusal(message):
    return json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                 "code": None}}).encode()


@pytest.mark.parametrize("message, name", [
    ("Unrecognized request argument supplied: stream_options", "stream_options"),
    ("Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
     "max_tokens"),
    ("'developer' is not one of ['system', 'assistant', 'user', 'tool'] - 'messages.0.role'", "developer"),
    ("tools.0.function: Extra inputs are not permitted: strict", "strict"),
])
def test_a_400_naming_a_parameter_the_request_carries(message, name):
    assert refused_parameter(400, refusal(message), CHAT) == name
    assert refused_parameter(422, refusal(message), CHAT) is None  # only a 400
    carried_not = {key: value for key, value in CHAT.items() if key not in ("stream_options", "max_tokens")}
    carried_not.update(messages=[{"role": "user", "content": "hi"}], tools=[])
    assert refused_parameter(400, refusal(message), carried_not) is None


def test_other_400s_name_nothing():
    assert refused_parameter(400, refusal("This model's maximum context length is 8192 tokens"), CHAT) is None


def test_a_request_without_what_was_refused():
    changed = without(CHAT, frozenset(("stream_options", "max_tokens", "developer", "strict")))
    assert "stream_options" not in changed and changed["max_completion_tokens"] == 5 and "max_tokens" not in changed
    assert [message["role"] for message in changed["messages"]] == ["system", "user"]
    assert changed["tools"][0]["function"] == {"name": "f", "parameters": {}}
    assert CHAT["max_tokens"] == 5 and CHAT["messages"][0]["role"] == "developer"  # the input is kept


def test_the_upstream_refusing_stream_options_is_asked_again_without_it_and_remembered(upstream, make_proxy, caplog):
    caplog.set_level("WARNING", logger="retry_shield")
    upstream.plan(status(400, body=json.loads(refusal("Unrecognized request argument supplied: stream_options"))),
                  good(text="usage or not"))
    shield = make_proxy(upstream, MAX_RETRIES="1")
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    for _ in range(2):
        code, _, answer = request(shield.port, path="/v1/chat/completions", body=body)
        assert code == 200 and json.loads(answer)["choices"][0]["message"]["content"] == "usage or not"
    sent = [seen.json for seen in upstream.requests]
    assert "stream_options" in sent[0] and "stream_options" not in sent[1] and "stream_options" not in sent[2]
    assert len(sent) == 3  # the second request went without it at once
    learned = [r.getMessage() for r in caplog.records if "go without it from now on" in r.getMessage()]
    assert len(learned) == 1


def test_a_parameter_refused_again_is_the_answer(upstream, make_proxy):
    refused = status(400, body=json.loads(refusal("Unrecognized request argument supplied: stream_options")))
    upstream.plan(refused)
    shield = make_proxy(upstream)
    body = json.dumps({"model": "m", "messages": [], "stream_options": {"include_usage": True},
                       "stream": True}).encode()
    code, _, answer = request(shield.port, path="/v1/chat/completions", body=body)
    assert code == 400 and b"stream_options" in answer
    assert upstream.attempts == 2  # the first refusal, then once without it: the client's own field is dropped too
