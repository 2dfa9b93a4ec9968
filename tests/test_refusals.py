"""A 400 that says the body is of the other API: on a base URL in auto mode, one final error naming UPSTREAM_API."""

import json

import pytest

from retry_shield.refusals import wrong_api_refusal
from tests.fake_upstream import FakeUpstream, good, status
from tests.helpers import post

CHAT = "/v1/chat/completions"


def openai_error(message, param=None, code=None):
    return json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": param,
                                 "code": code}}).encode()


def vllm_error(message):
    """vLLM's (and SGLang's) 400 for a request its pydantic model rejects: str(exc) and str(exc.errors())."""
    return json.dumps({"object": "error", "message": message, "type": "BadRequestError", "param": None,
                       "code": 400}).encode()


# What chat servers answer a Responses body.
CHAT_SERVER_SAYS = [
    # OpenAI's chat endpoint, its usual form for a missing field
    openai_error("Missing required parameter: 'messages'.", "messages", "missing_required_parameter"),
    # Azure OpenAI chat deployment (JSON schema), Azure-Samples/azure-search-openai-demo#118
    openai_error("'messages' is a required property"),
    # Azure / GitHub Copilot's form for fields it does not know (formulahendry/wechat-acp#16)
    openai_error("Unrecognized request argument supplied: input"),
    openai_error("Unrecognized request arguments supplied: include, input, instructions, store"),
    # llama.cpp server (tools/server utils: throw std::invalid_argument("'messages' is required"))
    json.dumps({"error": {"code": 400, "message": "'messages' is required", "type": "invalid_request_error"}}).encode(),
    # LM Studio (fishjar/kiss-translator#310)
    json.dumps({"error": "'messages' field is required"}).encode(),
    # vLLM with pydantic 2 (openguardrails/AgentTrustBench#10)
    vllm_error("[{'type': 'missing', 'loc': ('body', 'messages'), 'msg': 'Field required', "
               "'input': {'model': 'm', 'input': 'hi', 'stream': True}}]"),
    # vLLM with pydantic 1 (GoogleCloudPlatform/vertex-ai-samples#2635)
    vllm_error("[{'loc': ('body', 'messages'), 'msg': 'field required', 'type': 'value_error.missing'}]"),
    # FastAPI's own 422 detail
    json.dumps({"detail": [{"type": "missing", "loc": ["body", "messages"], "msg": "Field required",
                            "input": {"model": "m", "input": "hi"}}]}).encode(),
    # pydantic's text as some servers pass it on
    b"1 validation error for ChatCompletionRequest\nmessages\n  Field required [type=missing, input_value={}]",
    # axum's Json rejection of a serde error (TGI and other Rust servers; fms-guardrails-orchestrator#91 form)
    b"Failed to deserialize the JSON body into the target type: missing field `messages` at line 1 column 44",
    # OpenRouter (BerriAI/litellm#14402)
    json.dumps({"error": {"message": "Input required: specify \"prompt\" or \"messages\"", "code": 400}}).encode(),
]

# What Responses servers answer a chat body.
RESPONSES_SERVER_SAYS = [
    # OpenAI's /v1/responses (madox2/vim-ai#162)
    openai_error("Unsupported parameter: 'messages'. In the Responses API, this parameter has moved to 'input'. "
                 "Try again with the new parameter.", "messages", "unsupported_parameter"),
    openai_error("Unsupported parameter: `messages`. In the Responses API, this parameter has moved to `input`."),
    openai_error("Unknown parameter: 'messages'.", "messages", "unknown_parameter"),
    openai_error("Unrecognized request arguments supplied: messages, stream_options"),
    openai_error("Missing required parameter: 'input'.", "input", "missing_required_parameter"),
    vllm_error("[{'type': 'missing', 'loc': ('body', 'input'), 'msg': 'Field required', 'input': {'model': 'm'}}]"),
    b"Failed to deserialize the JSON body into the target type: unknown field `messages`, expected one of `input`",
]

# Refusals of a body of the right API: the learned-parameter 400s (quirks) and ordinary mistakes.
NEITHER_SAYS = [
    openai_error("Unrecognized request argument supplied: stream_options"),
    openai_error("Unsupported parameter: 'max_tokens' is not supported with this model. "
                 "Use 'max_completion_tokens' instead."),
    openai_error("'developer' is not one of ['system', 'assistant', 'user', 'tool'] - 'messages.0.role'"),
    openai_error("tools.0.function: Extra inputs are not permitted: strict"),
    openai_error("This model's maximum context length is 8192 tokens"),
    # openinterpreter/openinterpreter#251, run-llama/llama_index#9373: the field is there, something in it is wrong
    openai_error("'content' is a required property - 'messages.4'"),
    openai_error("[] is too short - 'messages'"),
    openai_error("Invalid 'messages[0].content': string too long."),
    # Stack-Cairn/LiveAgent#334: a Responses server on a Responses body
    openai_error("Unknown parameter: 'input[32].status'."),
    openai_error("Invalid 'input[0].content[0].type': expected one of 'input_text', 'input_image'."),
    # pydantic echoes the body as 'input': a nested missing field is no wrong API
    json.dumps({"detail": [{"type": "missing", "loc": ["body", "messages", 5, "content"], "msg": "Field required",
                            "input": {"role": "assistant"}}]}).encode(),
    b"Failed to deserialize the JSON body into the target type: messages[1]: missing field `content` at line 8",
    openai_error("The model `gpt-9` does not exist", code="model_not_found"),
    b"",
]


@pytest.mark.parametrize("body", CHAT_SERVER_SAYS)
def test_a_chat_server_refusing_a_responses_body(body):
    said = wrong_api_refusal(400, body, "responses")
    assert said and ("messages" in said or "input" in said)
    assert wrong_api_refusal(422, body, "responses") == said  # FastAPI's and axum's validation status
    assert wrong_api_refusal(400, body, "chat") is None  # the same words are no news for a chat body
    for other in (404, 401, 429, 500, 200):
        assert wrong_api_refusal(other, body, "responses") is None


@pytest.mark.parametrize("body", RESPONSES_SERVER_SAYS)
def test_a_responses_server_refusing_a_chat_body(body):
    said = wrong_api_refusal(400, body, "chat")
    assert said and ("messages" in said or "input" in said)
    assert wrong_api_refusal(400, body, "responses") is None


@pytest.mark.parametrize("body", NEITHER_SAYS)
def test_other_refusals_say_nothing_of_the_api(body):
    assert wrong_api_refusal(400, body, "responses") is None
    assert wrong_api_refusal(400, body, "chat") is None


def test_the_words_that_tell_are_returned():
    assert wrong_api_refusal(400, CHAT_SERVER_SAYS[0], "responses") == "Missing required parameter: 'messages'"
    assert wrong_api_refusal(400, CHAT_SERVER_SAYS[4], "responses") == "'messages' is required"
    assert wrong_api_refusal(400, RESPONSES_SERVER_SAYS[0], "chat") == "Unsupported parameter: 'messages'"


# -- through the real proxy ----------------------------------------------------------------------------------------


def assert_named(received, setting, said):
    error = json.loads(received)["error"]
    assert error["code"] == "wrong_upstream_api" and error["type"] == "proxy_error"
    assert "set UPSTREAM_API=%s" % setting in error["message"] and said in error["message"], error["message"]


@pytest.mark.parametrize("stream", [True, False])
def test_a_chat_server_refusing_a_codex_body_is_answered_at_once(make_proxy, stream):
    """Before: the upstream's 400 reached Codex as it came, which says nothing of UPSTREAM_API."""
    with FakeUpstream() as chat_only:  # a server that routes /v1/responses to its chat handler
        chat_only.plan(status(400, body=json.loads(CHAT_SERVER_SAYS[0])))
        shield = make_proxy(chat_only, UPSTREAM_API=None)  # auto on a base URL; MAX_RETRIES stays 8
        code, headers, received = post(shield.port, body={"model": "m", "input": "hi", "stream": stream})
        assert code == 502 and headers["content-type"] == "application/json"
        assert_named(received, "chat", "Missing required parameter: 'messages'")
        assert chat_only.attempts == 1 and chat_only.requests[0].path == "/v1/responses"


def test_a_responses_server_refusing_a_chat_body_is_answered_at_once(make_proxy):
    """The refusal also lists stream_options, a parameter the proxy would otherwise drop and ask again without."""
    with FakeUpstream() as responses_only:
        responses_only.plan(status(400, body=json.loads(RESPONSES_SERVER_SAYS[3])), good())
        shield = make_proxy(responses_only, UPSTREAM_API=None)
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}  # not streamed: stream_options added
        code, _, received = post(shield.port, CHAT, body)
        assert code == 502, received
        assert_named(received, "responses", "Unrecognized request arguments supplied: messages")
        assert responses_only.attempts == 1 and "stream_options" in responses_only.requests[0].json


def test_a_known_protocol_passes_the_400_as_it_came(make_proxy):
    """With UPSTREAM_API set (or a full operation URL) nothing is guessed: the upstream's words are the answer."""
    with FakeUpstream() as upstream:
        upstream.plan(status(400, body=json.loads(RESPONSES_SERVER_SAYS[0])))
        shield = make_proxy(upstream, UPSTREAM_API="responses")
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        code, _, received = post(shield.port, CHAT, body)
        assert code == 400 and json.loads(received)["error"]["code"] == "unsupported_parameter"
        assert upstream.attempts == 1


def test_a_parameter_refusal_on_a_base_url_is_still_learned(make_proxy):
    """quirks keeps working in auto mode: a 400 naming stream_options is no wrong API."""
    with FakeUpstream() as upstream:
        upstream.plan(status(400, body=json.loads(NEITHER_SAYS[0])), good(text="fine"))
        shield = make_proxy(upstream, UPSTREAM_API=None)
        code, _, received = post(shield.port, CHAT, {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert code == 200 and json.loads(received)["choices"][0]["message"]["content"] == "fine"
        assert upstream.attempts == 2 and "stream_options" not in upstream.requests[1].json
