"""Chat Completions answer -> Responses: the response object and the SSE events of a judged chat stream."""

import copy
import json
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple, Union

from .aggregate import assemble_chat_completion
from .chat_request import ChatPlan
from .search import find
from .sse import data_json

ERROR_MARK = b'"error"'
INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}
TERMINAL_EVENTS = {"completed": "response.completed", "incomplete": "response.incomplete",
                   "failed": "response.failed"}
COMPACT = (",", ":")

# Every field of the API's response object, in the API's order; the SDK's output_text is a
# property computed from output, not a field on the wire.
RESPONSE_FIELDS = (
    "id", "object", "created_at", "status", "background", "completed_at", "error", "incomplete_details",
    "instructions", "max_output_tokens", "max_tool_calls", "model", "output", "parallel_tool_calls",
    "previous_response_id", "prompt", "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention",
    "reasoning", "safety_identifier", "service_tier", "temperature", "text", "tool_choice", "tools",
    "top_logprobs", "top_p", "truncation", "usage", "user", "metadata", "access_programs", "conversation",
    "image", "input_transformations", "moderation", "prompt_cache_diagnostics", "tool_usage",
)
# Request fields the response repeats, with what the API answers when the request left them out.
# The rest (conversation, moderation, tool_usage, ...) stay null: nothing behind a chat
# upstream produces them.
ECHO_DEFAULTS: Dict[str, Any] = {
    "background": False, "instructions": None, "max_output_tokens": None, "max_tool_calls": None,
    "metadata": {}, "parallel_tool_calls": True, "previous_response_id": None, "prompt": None,
    "prompt_cache_key": None, "prompt_cache_options": None, "prompt_cache_retention": None,
    "reasoning": {"effort": None, "summary": None}, "safety_identifier": None, "service_tier": "default",
    "temperature": 1.0, "text": {"format": {"type": "text"}, "verbosity": "medium"}, "tool_choice": "auto",
    "tools": [], "top_logprobs": 0, "top_p": 1.0, "truncation": "disabled", "user": None, "image": None,
}


def chat_to_response(body: Union[bytes, memoryview], plan: ChatPlan, ids: str, created_at: int,
                     status_hint: str = "") -> Dict[str, Any]:
    """The Responses ``response`` object for a judged, complete Chat Completions stream.

    ``ids`` (unique per request) is the root of every id: resp_<ids>, then <prefix>_<ids>_<n>
    with n the item's output index. ``status_hint`` is the outcome of the caller's verdict:
    only "failed" counts, when the body shows no error line itself. A failed answer has no
    output: Codex runs a tool call as soon as it sees the item, even in a failed response.
    """
    completion = assemble_chat_completion(body)  # read where it lies: a copy of a big answer costs its page faults
    error = _stream_error(body)
    if error is None and status_hint == "failed":
        error = {"code": "server_error", "message": "the upstream answer failed"}
    choices = completion["choices"]
    choice = choices[0] if choices else None  # a Responses request cannot ask for several choices
    incomplete = None if choice is None else INCOMPLETE_REASONS.get(choice.get("finish_reason"))
    status = "failed" if error is not None else "incomplete" if incomplete else "completed"
    output = [] if error is not None or choice is None else _output_items(choice, plan, ids, status)

    echo = plan.echo or {}
    response: Dict[str, Any] = dict.fromkeys(RESPONSE_FIELDS)
    for key, default in ECHO_DEFAULTS.items():
        response[key] = _echoed(echo.get(key), default)
    response.update({
        "id": "resp_" + ids, "object": "response", "created_at": created_at, "status": status,
        # The caller's clock is the only one a pure function has: the answer is whole by then.
        "completed_at": created_at if status == "completed" else None,
        "error": error, "incomplete_details": {"reason": incomplete} if status == "incomplete" else None,
        "model": completion.get("model") or plan.model, "output": output,
        "service_tier": completion.get("service_tier") or response["service_tier"],
        "usage": _usage(completion.get("usage")),
    })
    return response


# The field a call item streams, and the name of the events that carry it.
STREAMED_FIELD = {
    "function_call": ("arguments", "response.function_call_arguments"),
    "custom_tool_call": ("input", "response.custom_tool_call_input"),
}


def response_events(response: Dict[str, Any]) -> bytes:
    """The Responses SSE stream a streaming client gets for ``response``, in the API's event order."""
    frames = []
    for number, (kind, fields) in enumerate(_events(response)):
        event: Dict[str, Any] = {"type": kind, "sequence_number": number}
        event.update(fields)
        frames.append(b"event: " + kind.encode("ascii") + b"\ndata: " + _json(event) + b"\n\n")
    return b"".join(frames)


# ---------------------------------------------------------------------------
# The response object
# ---------------------------------------------------------------------------


def _stream_error(body: Union[bytes, memoryview]) -> Optional[Dict[str, Any]]:
    """The final error a data line of the stream carries, as the Responses API words it, or None."""
    if find(body, ERROR_MARK) < 0:  # the usual case: one byte search, no line is parsed
        return None
    for line in bytes(body).splitlines():
        if ERROR_MARK not in line:
            continue
        event = data_json(line.strip())
        if event is None:
            continue
        # The same lines StreamInspector judges as errors.
        kind = event.get("type")
        if kind == "error":
            error = event.get("error") if isinstance(event.get("error"), dict) else event
        elif isinstance(event.get("error"), dict) and not str(kind or "").startswith("response."):
            error = event["error"]
        else:
            continue
        # Codex matches the code as a string (context_length_exceeded, insufficient_quota), so
        # the upstream's code is kept even where the SDK's list of codes does not name it.
        code = error.get("code")
        if code is None or code == "":
            code = error.get("type") or "server_error"
        return {"code": str(code), "message": str(error.get("message") or "the upstream reported an error")}
    return None


def _echoed(value: Any, default: Any) -> Any:
    if value is None:
        return copy.deepcopy(default)
    if isinstance(default, dict) and isinstance(value, dict):
        merged = copy.deepcopy(default)  # the API fills what the request left out of these objects
        merged.update(value)
        return merged
    return value


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _usage(usage: Any) -> Optional[Dict[str, Any]]:
    """Chat usage in Responses terms; None when the upstream sent none (zeros would claim a count)."""
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens_details") if isinstance(usage.get("prompt_tokens_details"), dict) else {}
    answer = (usage.get("completion_tokens_details")
              if isinstance(usage.get("completion_tokens_details"), dict) else {})
    input_tokens, output_tokens = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
    # DeepSeek reports cache hits as prompt_cache_hit_tokens.
    cached = _count(prompt.get("cached_tokens")) or _count(usage.get("prompt_cache_hit_tokens"))
    return {"input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": cached,
                                     "cache_write_tokens": _count(prompt.get("cache_write_tokens"))},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": _count(answer.get("reasoning_tokens"))},
            "total_tokens": _count(usage.get("total_tokens")) or input_tokens + output_tokens}


def _output_items(choice: Dict[str, Any], plan: ChatPlan, ids: str, status: str) -> List[Dict[str, Any]]:
    """Reasoning, then the message, then one item per tool call; the last item is the one a cut-off ended."""
    message = choice["message"]
    calls = message.get("tool_calls") or []
    items: List[Dict[str, Any]] = []
    reasoning = message.get("reasoning_content")
    if reasoning:
        items.append({"type": "reasoning", "id": "rs_%s_%d" % (ids, len(items)), "summary": [],
                      "content": [{"type": "reasoning_text", "text": reasoning}],
                      "encrypted_content": None, "status": "completed"})
    parts = []
    text = message.get("content")
    # Models that call tools often write a blank line first: no message item for it.
    if text and not (calls and not text.strip()):
        parts.append({"type": "output_text", "text": text, "annotations": [],
                      "logprobs": _part_logprobs(choice.get("logprobs"))})
    if message.get("refusal"):
        parts.append({"type": "refusal", "refusal": message["refusal"]})
    if parts:
        items.append({"type": "message", "id": "msg_%s_%d" % (ids, len(items)), "role": "assistant",
                      "status": "completed", "content": parts})
    taken = set(plan.call_ids)
    for call in calls:
        item = _call_item(call, plan, ids, len(items), taken)
        taken.add(item["call_id"])
        items.append(item)
    if items and status == "incomplete":
        items[-1]["status"] = "incomplete"
    return items


def _call_item(call: Dict[str, Any], plan: ChatPlan, ids: str, index: int, taken: Set[str]) -> Dict[str, Any]:
    function = call.get("function") or {}
    flat = function.get("name") or ""
    arguments = function.get("arguments") or ""
    call_id = call.get("id")
    # Some servers number their calls call_0, call_1... on every turn: a second call_0 in
    # the conversation would tie this call's output to an old call.
    if not isinstance(call_id, str) or not call_id or call_id in taken:
        call_id = "call_%s_%d" % (ids, index)
    namespace, name = plan.namespaced.get(flat, (None, flat))
    if flat in plan.custom_tools:
        item: Dict[str, Any] = {"type": "custom_tool_call", "id": "ctc_%s_%d" % (ids, index), "call_id": call_id,
                                "name": name, "input": _custom_input(arguments)}
    else:  # "{}" is the API's text for a call without arguments; "" is no JSON to a client that parses it
        item = {"type": "function_call", "id": "fc_%s_%d" % (ids, index), "call_id": call_id, "name": name,
                "arguments": arguments or "{}"}
    if namespace is not None:
        item["namespace"] = namespace
    item["status"] = "completed"
    return item


def _custom_input(arguments: str) -> str:
    """A freeform tool's text from the {"input": ...} arguments of the function that stands for it.

    A model that wrote the text itself instead of that object gets its text through as it is.
    """
    try:
        value = json.loads(arguments)
    except ValueError:
        return arguments
    if isinstance(value, dict) and isinstance(value.get("input"), str):
        return value["input"]
    return value if isinstance(value, str) else arguments


def _part_logprobs(logprobs: Any) -> List[Dict[str, Any]]:
    """Chat token logprobs in the shape of an output_text part's (present only when the client asked)."""
    tokens = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(tokens, list):
        return []
    return [{"token": token.get("token", ""), "bytes": token.get("bytes") or [], "logprob": token.get("logprob", 0.0),
             "top_logprobs": [{"token": top.get("token", ""), "bytes": top.get("bytes") or [],
                               "logprob": top.get("logprob", 0.0)} for top in token.get("top_logprobs") or ()]}
            for token in tokens if isinstance(token, dict)]


# ---------------------------------------------------------------------------
# The events
# ---------------------------------------------------------------------------


Event = Tuple[str, Dict[str, Any]]


def _events(response: Dict[str, Any]) -> Iterator[Event]:
    snapshot = dict(response, status="in_progress", completed_at=None, error=None, incomplete_details=None,
                    output=[], usage=None)
    yield "response.created", {"response": snapshot}
    yield "response.in_progress", {"response": snapshot}
    for index, item in enumerate(response.get("output") or ()):
        for event in _item_events(index, item):
            yield event
    yield TERMINAL_EVENTS.get(response.get("status"), "response.completed"), {"response": response}


def _item_events(index: int, item: Dict[str, Any]) -> Iterator[Event]:
    """An item's events: added (status in_progress, nothing written yet), its text in one delta, done."""
    kind = item.get("type")
    where = {"item_id": item.get("id"), "output_index": index}
    if kind in ("message", "reasoning"):
        yield "response.output_item.added", {"output_index": index,
                                             "item": dict(item, content=[], status="in_progress")}
        for content_index, part in enumerate(item.get("content") or ()):
            for event in _part_events(dict(where, content_index=content_index), part):
                yield event
    elif kind in STREAMED_FIELD:
        field, event = STREAMED_FIELD[kind]
        value = item.get(field, "")
        yield "response.output_item.added", {"output_index": index,
                                             "item": dict(item, status="in_progress", **{field: ""})}
        yield event + ".delta", dict(where, delta=value)
        yield event + ".done", dict(where, **{field: value})
    else:
        yield "response.output_item.added", {"output_index": index, "item": item}
    yield "response.output_item.done", {"output_index": index, "item": item}


def _part_events(where: Dict[str, Any], part: Dict[str, Any]) -> Iterator[Event]:
    kind = part.get("type")
    if kind == "output_text":
        text = part.get("text", "")
        logprobs = [{"token": token["token"], "logprob": token["logprob"],
                     "top_logprobs": [{"token": top["token"], "logprob": top["logprob"]}
                                      for top in token.get("top_logprobs") or ()]}
                    for token in part.get("logprobs") or ()]
        yield "response.content_part.added", dict(where, part=dict(part, text="", logprobs=[]))
        yield "response.output_text.delta", dict(where, delta=text, logprobs=logprobs)
        yield "response.output_text.done", dict(where, text=text, logprobs=logprobs)
    elif kind == "refusal":
        refusal = part.get("refusal", "")
        yield "response.content_part.added", dict(where, part=dict(part, refusal=""))
        yield "response.refusal.delta", dict(where, delta=refusal)
        yield "response.refusal.done", dict(where, refusal=refusal)
    elif kind == "reasoning_text":
        text = part.get("text", "")
        yield "response.content_part.added", dict(where, part=dict(part, text=""))
        yield "response.reasoning_text.delta", dict(where, delta=text)
        yield "response.reasoning_text.done", dict(where, text=text)
    else:
        yield "response.content_part.added", dict(where, part=part)
    yield "response.content_part.done", dict(where, part=part)


def _json(value: Any) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=False, separators=COMPACT).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escape from the upstream: forwarded as an escape
        return json.dumps(value, separators=COMPACT).encode("ascii")
