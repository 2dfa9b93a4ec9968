"""Upstream refusals that say a request body is of the other API: a chat server given a Responses body, and back."""

import json
import re
from typing import Any, List, Optional, Pattern, Union

# Statuses with which servers refuse a body: 400, and 422 from FastAPI's and axum's own validation.
REFUSING = frozenset((400, 422))
# How much of an error body is read: the words that tell come first.
READ = 4000
QUOTE = "['\"`]"
# After a field's name: not a longer name, not a path into it ('input[3].status', 'messages.0.role').
ENDS = r"(?![\w\[]|\.\w)"


def _missing(name: str) -> List[str]:
    """Ways servers say that the top-level field ``name`` is missing."""
    return [
        r"missing required param(?:eter)?:?\s*%s?%s%s?%s" % (QUOTE, name, QUOTE, ENDS),  # OpenAI, Azure
        r"%s%s%s is a required property(?! - )" % (QUOTE, name, QUOTE),  # JSON schema (Azure); " - 'path'" is nested
        r"(?:^|[\s:(])%s?%s%s? (?:field )?is required" % (QUOTE, name, QUOTE),  # llama.cpp, LM Studio
        # pydantic through FastAPI (vLLM, SGLang): "'loc': ('body', 'messages'), 'msg': 'Field required'"
        r"['\"]loc['\"]:\s*[\[(]\s*['\"]body['\"],\s*['\"]%s['\"]\s*[\])],\s*['\"]msg['\"]:\s*['\"]field required['\"]"
        % name,
        r"^%s\n\s+field required" % name,  # pydantic's own text: "messages\n  Field required [type=missing"
        r"missing field `%s`" % name,  # serde through axum (TGI and other Rust servers)
    ]


def _unknown(name: str) -> List[str]:
    """Ways servers say that the top-level field ``name`` is not theirs."""
    return [
        r"unrecognized request arguments? supplied:\s*(?:[\w.]+,\s*)*%s%s" % (name, ENDS),  # Azure, OpenAI
        r"(?:unsupported|unknown|unrecognized) parameter:?\s*%s%s%s" % (QUOTE, name, QUOTE),  # OpenAI
        r"unknown field `%s`" % name,  # serde's deny_unknown_fields
        r"['\"]loc['\"]:\s*[\[(]\s*['\"]body['\"],\s*['\"]%s['\"]\s*[\])],\s*['\"]msg['\"]:\s*"
        r"['\"]extra (?:inputs are|fields) not permitted['\"]" % name,  # pydantic with extra="forbid"
    ]


def _compiled(patterns: List[str]) -> Pattern[str]:
    return re.compile("|".join("(?:%s)" % pattern for pattern in patterns), re.IGNORECASE | re.MULTILINE)


# What a server of the other API says to a body, by the protocol the body was sent in: a chat server
# misses 'messages' or refuses 'input'; a Responses server misses 'input' or refuses 'messages'.
OTHER_API_SAYS = {
    "responses": _compiled(_missing("messages") + _unknown("input") + [r'specify "prompt" or "messages"']),
    "chat": _compiled(_missing("input") + _unknown("messages")),
}


def wrong_api_refusal(status: int, body: Union[bytes, memoryview], sent_protocol: str) -> Optional[str]:
    """The words of a refusal that says a body sent in ``sent_protocol`` is of the other API; else None.

    Pure: status, body and protocol decide. A 400 that names a parameter of the right API
    (stream_options, max_tokens, 'messages.0.role', 'input[3].status') says nothing of the kind.
    """
    pattern = OTHER_API_SAYS.get(sent_protocol)
    if status not in REFUSING or pattern is None:
        return None
    match = pattern.search(body_message(body))
    return None if match is None else match.group(0).strip(" :(")


def body_message(body: Union[bytes, memoryview]) -> str:
    """The message of an error body: ``error.message``, ``error``, ``detail`` or ``message``, else the text itself."""
    text = bytes(body[:READ]).decode("utf-8", "replace")
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return _message(value)


def _message(value: Any) -> str:
    if isinstance(value, dict):
        for key in ("error", "detail", "message"):
            if value.get(key):
                return _message(value[key])
        return ""
    if isinstance(value, list):  # FastAPI's detail: the validation errors themselves
        return json.dumps(value)
    return str(value)
