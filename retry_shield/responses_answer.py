"""Responses answer -> Chat Completions: the chat.completion and chunk stream of a judged Responses stream."""

import json
from typing import Any, Dict, List, NamedTuple, Optional

from .responses_reading import STREAMED_FIELD, as_dict, as_index, as_text
from .responses_request import ResponsesPlan

COMPACT = (",", ":")
ITEM_JOINER = "\n\n"  # between the texts of two message items, or of two reasoning items: paragraphs
# A response.incomplete's reason as a chat finish_reason; any other reason (max_messages, steered, none)
# also means the answer stopped before its end, which is what "length" tells a chat client.
FINISH_REASONS = {"max_output_tokens": "length", "content_filter": "content_filter"}
# The chat error type of a code; any other final code is about the request, as the Chat API words it.
ERROR_TYPES = {"insufficient_quota": "insufficient_quota", "server_error": "server_error"}


class Answer(NamedTuple):
    """What a chat client gets of a response: the pieces of each text in order, and the calls."""

    reasoning: List[str]  # one piece per reasoning item with text, joiners included
    content: Optional[List[str]]  # one piece per output_text part; None when the answer has no text part
    refusal: Optional[List[str]]
    annotations: List[Dict[str, Any]]
    calls: List[Dict[str, Any]]  # chat tool calls, whole
    finish_reason: str


def chat_completion(response: Dict[str, Any], plan: ResponsesPlan, ids: str, created: int) -> Dict[str, Any]:
    """The non-streaming ``chat.completion`` for ``response``: every field of the API's, null where none.

    ``usage`` is always an object: clients read ``completion.usage.prompt_tokens`` without a check
    (the Chat API always sends it), so an upstream that reported none gives zeros.
    """
    answer = _answer(response, ids)
    message: Dict[str, Any] = {
        "role": "assistant", "content": _joined(answer.content), "refusal": _joined(answer.refusal),
        "annotations": answer.annotations, "audio": None, "function_call": None}
    if answer.calls:
        message["tool_calls"] = answer.calls
    if answer.reasoning:
        message["reasoning_content"] = "".join(answer.reasoning)
    completion = _head(response, plan, ids, created, "chat.completion")
    completion.update({
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": answer.finish_reason}],
        "usage": _usage(response.get("usage")), "metadata": None, "moderation": None})
    return completion


def chat_chunks(response: Dict[str, Any], plan: ResponsesPlan, ids: str, created: int) -> bytes:
    """The streamed answer for ``response``: ``data: {chat.completion.chunk}`` lines, then ``data: [DONE]``.

    The role; the reasoning, as ``reasoning_content``, before the text; a delta per text part; each
    tool call as a delta with its id, type and name, then one with its arguments; the finish_reason;
    a usage chunk (no choices) when the client asked for it. The accumulated stream is the
    ``chat_completion`` of the same response.
    """
    answer = _answer(response, ids)
    head = _head(response, plan, ids, created, "chat.completion.chunk")
    first: Dict[str, Any] = {"role": "assistant", "content": "" if answer.content is not None else None,
                             "refusal": None}
    deltas: List[Dict[str, Any]] = [first]
    deltas += [{"reasoning_content": piece} for piece in answer.reasoning]
    deltas += [{"content": piece} for piece in answer.content or ()]
    deltas += [{"refusal": piece} for piece in answer.refusal or ()]
    for index, call in enumerate(answer.calls):
        deltas += _call_deltas(index, call)
    frames = [_chunk(head, [_choice(delta)]) for delta in deltas]
    frames.append(_chunk(head, [_choice({}, answer.finish_reason)]))
    if plan.include_usage:
        frames.append(_chunk(head, [], _usage(response.get("usage"))))
    frames.append(b"data: [DONE]\n\n")
    return b"".join(frames)


def failed_error(response: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The chat-shaped error body of a failed response, or None when it did not fail.

    The shield lets only final codes through; any failed answer gets its error, never a completion.
    """
    if response.get("status") != "failed":
        return None
    error = as_dict(response.get("error"))
    code = None if error.get("code") is None or error.get("code") == "" else str(error["code"])
    kind = as_text(error.get("type")) or ERROR_TYPES.get(code or "server_error", "invalid_request_error")
    return {"error": {"message": as_text(error.get("message")) or "the upstream answer failed", "type": kind,
                      "code": code, "param": error.get("param") if isinstance(error.get("param"), str) else None}}


# ---------------------------------------------------------------------------
# The chat answer
# ---------------------------------------------------------------------------


def _texts(parts: Any, kind: str, field: str = "text") -> List[Dict[str, Any]]:
    return [part for part in parts if isinstance(part, dict) and part.get("type") == kind
            and isinstance(part.get(field), str)] if isinstance(parts, list) else []


def _answer(response: Dict[str, Any], ids: str) -> Answer:
    reasoning: List[str] = []
    content: Optional[List[str]] = None
    refusal: Optional[List[str]] = None
    annotations: List[Dict[str, Any]] = []
    calls: List[Dict[str, Any]] = []
    written = 0  # characters of content so far: where the next part's annotation indexes start
    for item in response.get("output") or ():
        kind = as_text(item.get("type")) if isinstance(item, dict) else ""
        if kind == "reasoning":  # the model's own reasoning text where the server gives it, else its summary
            text = "".join(part["text"] for part in _texts(item.get("content"), "reasoning_text")) or \
                ITEM_JOINER.join(part["text"] for part in _texts(item.get("summary"), "summary_text"))
            if text:
                reasoning.append((ITEM_JOINER if reasoning else "") + text)
        elif kind == "message":  # a preamble and an answer are two paragraphs of the one choice
            joiner = ITEM_JOINER if written else ""
            for part in _texts(item.get("content"), "output_text"):
                content = [] if content is None else content
                written += len(joiner)
                annotations += _annotations(part.get("annotations"), written)
                content.append(joiner + part["text"])
                written += len(part["text"])
                joiner = ""
            for part in _texts(item.get("content"), "refusal", "refusal"):
                refusal = [] if refusal is None else refusal
                refusal.append((ITEM_JOINER if refusal else "") + part["refusal"])
        elif kind in STREAMED_FIELD:
            calls.append(_call(item, ids, len(calls)))
    status = response.get("status")
    if status == "incomplete":
        reason = as_dict(response.get("incomplete_details")).get("reason")
        finish = FINISH_REASONS.get(reason, "length") if isinstance(reason, str) else "length"
    elif status == "failed":  # failed_error is the answer; a client must not run a failed answer's calls
        finish, calls = "stop", []
    else:
        finish = "tool_calls" if calls else "stop"
    return Answer(reasoning, content, refusal, annotations, calls, finish)


def _call(item: Dict[str, Any], ids: str, number: int) -> Dict[str, Any]:
    """A chat tool call. A custom_tool_call (a chat client offers no freeform tools: responses_request
    refuses them) goes as a function with one string argument ``input``, chat_answer's form for them."""
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        call_id = "call_%s_%d" % (ids, number)
    arguments = item.get("arguments")
    if item.get("type") == "custom_tool_call":
        arguments = {"input": as_text(item.get("input"))}
    if isinstance(arguments, (dict, list)):  # a server's object instead of its JSON text
        arguments = json.dumps(arguments, ensure_ascii=False, separators=COMPACT)
    # "{}" is the API's text for a call without arguments; "" is no JSON to a client that parses it.
    return {"id": call_id, "type": "function",
            "function": {"name": as_text(item.get("name")), "arguments": as_text(arguments) or "{}"}}


def _annotations(annotations: Any, offset: int) -> List[Dict[str, Any]]:
    """URL citations with their indexes in the whole content; other kinds have no chat form."""
    found = []
    for note in annotations if isinstance(annotations, list) else ():
        if isinstance(note, dict) and note.get("type") == "url_citation" and all(
                as_index(note.get(key)) is not None for key in ("start_index", "end_index")):
            found.append({"type": "url_citation", "url_citation": {
                "end_index": note["end_index"] + offset, "start_index": note["start_index"] + offset,
                "title": as_text(note.get("title")), "url": as_text(note.get("url"))}})
    return found


def _joined(pieces: Optional[List[str]]) -> Optional[str]:
    return None if pieces is None else "".join(pieces)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _usage(usage: Any) -> Dict[str, Any]:
    """Responses usage in chat terms; zeros where the upstream reported nothing (see chat_completion)."""
    usage = as_dict(usage)
    given, spent = as_dict(usage.get("input_tokens_details")), as_dict(usage.get("output_tokens_details"))
    prompt, completion = _count(usage.get("input_tokens")), _count(usage.get("output_tokens"))
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": _count(usage.get("total_tokens")) or prompt + completion,
            "prompt_tokens_details": {"cached_tokens": _count(given.get("cached_tokens")), "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": _count(spent.get("reasoning_tokens")),
                                          "audio_tokens": 0, "accepted_prediction_tokens": 0,
                                          "rejected_prediction_tokens": 0}}


def _head(response: Dict[str, Any], plan: ResponsesPlan, ids: str, created: int, kind: str) -> Dict[str, Any]:
    model = response.get("model")
    tier = response.get("service_tier")
    return {"id": "chatcmpl-" + ids, "object": kind, "created": created,
            "model": model if isinstance(model, str) and model else plan.model,
            "service_tier": tier if isinstance(tier, str) and tier else None, "system_fingerprint": None}


# ---------------------------------------------------------------------------
# The chunks
# ---------------------------------------------------------------------------


def _call_deltas(index: int, call: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The id, type and name first (arguments empty, as the API streams them), then the arguments."""
    name, arguments = call["function"]["name"], call["function"]["arguments"]
    opening = {"index": index, "id": call["id"], "type": "function", "function": {"name": name, "arguments": ""}}
    return [{"tool_calls": [opening]}, {"tool_calls": [{"index": index, "function": {"arguments": arguments}}]}]


def _choice(delta: Dict[str, Any], finish: Optional[str] = None) -> Dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


def _chunk(head: Dict[str, Any], choices: List[Dict[str, Any]], usage: Optional[Dict[str, Any]] = None) -> bytes:
    chunk = dict(head, choices=choices, usage=usage, obfuscation=None, moderation=None)
    return b"data: " + _json(chunk) + b"\n\n"


def _json(value: Any) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=False, separators=COMPACT).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escape from the upstream: forwarded as an escape
        return json.dumps(value, separators=COMPACT).encode("ascii")
