"""Responses answer -> Chat Completions: the chat.completion and chunk stream of a judged Responses stream."""

import json
import re
from typing import Any, Dict, Iterable, Iterator, List, NamedTuple, Optional, Tuple, Union

from .responses_request import ResponsesPlan

Span = Tuple[int, int]
COMPACT = (",", ":")
ITEM_JOINER = "\n\n"  # between the texts of two message items, or of two reasoning items: paragraphs
TERMINAL_STATUS = {b"response.completed": "completed", b"response.incomplete": "incomplete",
                   b"response.failed": "failed"}
# A response.incomplete's reason as a chat finish_reason; any other reason (max_messages, steered, none)
# also means the answer stopped before its end, which is what "length" tells a chat client.
FINISH_REASONS = {"max_output_tokens": "length", "content_filter": "content_filter"}
# The chat error type of a code; any other final code is about the request, as the Chat API words it.
ERROR_TYPES = {"insufficient_quota": "insufficient_quota", "server_error": "server_error"}
# The field a call item streams, and the event that carries it whole.
STREAMED_FIELD = {"function_call": ("arguments", b"response.function_call_arguments.done"),
                  "custom_tool_call": ("input", b"response.custom_tool_call_input.done")}
# The done events that give the parts of an item the stream added but never finished: (event, the
# item's list, the event's index of the part, the part's type, its text field).
PART_EVENTS = (
    (b"response.output_text.done", "content", "content_index", "output_text", "text"),
    (b"response.refusal.done", "content", "content_index", "refusal", "refusal"),
    (b"response.reasoning_text.done", "content", "content_index", "reasoning_text", "text"),
    (b"response.reasoning_summary_text.done", "summary", "summary_index", "summary_text", "text"),
)
# An event's name as the "type" key of its data line; an opening quote inside a JSON string is
# escaped, so these bytes are a real key (see StreamInspector's ERROR_MARK).
TYPE_KEY = re.compile(rb'"type"[ \t]*:[ \t]*"\Z')


def responses_answer(body: Union[bytes, memoryview], terminal: Optional[Span]) -> Dict[str, Any]:
    """The final ``response`` object of a judged, complete Responses stream, with its output recovered.

    ``terminal`` is the verdict's span of the terminal event's JSON; without it the last terminal
    event is looked for, else an ``error`` event, else the answer is a failed one. Status, usage, model,
    id, error and incomplete_details are the terminal event's. Output items come from the stream:
    each ``response.output_item.done`` by its output_index, the terminal's ``output`` filling the
    indexes no such event gave (some servers end with an empty output), and an item only added gets
    its parts from their done events. A call without its arguments (or input) gets them from its
    ``response.function_call_arguments.done``. Only those events are parsed, found by their name:
    delta events never are, so the cost is one byte search per name plus the parse of what is used.
    """
    data = bytes(body)
    response = _terminal_response(data, terminal)
    response["output"] = _output(data, response.get("output"))
    return response


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
    error = _dict(response.get("error"))
    code = None if error.get("code") is None or error.get("code") == "" else str(error["code"])
    kind = _text(error.get("type")) or ERROR_TYPES.get(code or "server_error", "invalid_request_error")
    return {"error": {"message": _text(error.get("message")) or "the upstream answer failed", "type": kind,
                      "code": code, "param": error.get("param") if isinstance(error.get("param"), str) else None}}


# ---------------------------------------------------------------------------
# Finding the events
# ---------------------------------------------------------------------------


def _event_spans(data: bytes, name: bytes) -> List[Span]:
    """The (start, end) of the JSON of each event named ``name``, in stream order.

    An event is named by its ``event:`` line, or by the ``"type"`` of its data line (servers that
    send no event lines): each hit of the name is checked where it stands, so the name inside a text
    costs only that check.
    """
    lines: Dict[int, None] = {}  # data line starts, in order; an event named both ways counts once
    at = data.find(name)
    while at >= 0:
        end = at + len(name)
        line = _after_event_line(data, at, end)
        if line < 0 and data[end:end + 1] == b'"' and TYPE_KEY.search(data, max(0, at - 16), at):
            line = data.rfind(b"\n", 0, at) + 1
            line = line if data.startswith(b"data:", line) else -1
        if line >= 0:
            lines[line] = None
        at = data.find(name, end)
    spans = []
    for line in lines:
        stop = data.find(b"\n", line)
        spans.append((line + 5, len(data) if stop < 0 else stop))
    return spans


def _after_event_line(data: bytes, at: int, end: int) -> int:
    """The start of the data line after ``event: NAME`` when the name at ``at`` is such a line, else -1."""
    start = at
    while start > 0 and data[start - 1] in b" \t":
        start -= 1
    if start < 6 or data[start - 6:start] != b"event:" or (start > 6 and data[start - 7] != 0x0A):
        return -1
    stop = data.find(b"\n", end, end + 8)
    if stop < 0 or data[end:stop].strip():
        return -1
    return stop + 1 if data.startswith(b"data:", stop + 1) else -1


def _events(data: bytes, spans: Iterable[Span]) -> Iterator[Dict[str, Any]]:
    for start, stop in spans:
        try:
            event = json.loads(data[start:stop])
        except ValueError:  # a broken line of a stream judged good: that event is left out
            continue
        if isinstance(event, dict):
            yield event


def _named(data: bytes, name: bytes) -> Iterator[Dict[str, Any]]:
    return _events(data, _event_spans(data, name))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _dict(value: Any) -> Dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _index(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


# ---------------------------------------------------------------------------
# The response object and its output
# ---------------------------------------------------------------------------


def _terminal_response(data: bytes, terminal: Optional[Span]) -> Dict[str, Any]:
    if terminal is None:  # the verdict came from elsewhere: the last terminal event, if any
        found = [spans[-1] for spans in (_event_spans(data, name) for name in TERMINAL_STATUS) if spans]
        terminal = max(found) if found else None
    if terminal is None:
        errors = list(_named(data, b"error"))
        event = errors[-1] if errors else {}
        error = event["error"] if isinstance(event.get("error"), dict) else dict(event, type=None)  # flat form
        return _failed(error.get("code"), error.get("message") or "the upstream stream has no terminal event",
                       error.get("type"))
    event = next(_events(data, (terminal,)), {})
    response = event.get("response")
    if not isinstance(response, dict):
        return _failed("server_error", "the upstream's terminal event is not a response")
    response = dict(response)  # a copy: its output is replaced
    if not isinstance(response.get("status"), str):
        name = str(event.get("type") or "").encode("ascii", "replace")
        response["status"] = TERMINAL_STATUS.get(name, "completed")
    return response


def _failed(code: Any, message: str, kind: Any = None) -> Dict[str, Any]:
    error = {"code": code or "server_error", "message": message}
    if kind:
        error["type"] = kind
    return {"status": "failed", "error": error, "incomplete_details": None, "output": [], "usage": None}


def _output(data: bytes, listed: Any) -> List[Dict[str, Any]]:
    items: Dict[int, Dict[str, Any]] = {}
    for event in _named(data, b"response.output_item.done"):
        index = _index(event.get("output_index"))
        if index is not None and isinstance(event.get("item"), dict):
            items[index] = event["item"]
    for index, item in enumerate(listed if isinstance(listed, list) else ()):
        if isinstance(item, dict):
            items.setdefault(index, item)
    added = _event_spans(data, b"response.output_item.added")
    if len(added) > len(items):  # an item added and never finished: its parts from their done events
        started = {}
        for event in _events(data, added):
            index = _index(event.get("output_index"))
            if index is not None and index not in items and isinstance(event.get("item"), dict):
                started[index] = event["item"]
        items.update(_finished(data, started))
    missing = {index for index, item in items.items() if _text(item.get("type")) in STREAMED_FIELD
               and not _text(item.get(STREAMED_FIELD[item["type"]][0]))}
    for kind in sorted({items[index]["type"] for index in missing}):
        field, name = STREAMED_FIELD[kind]
        for event in _named(data, name):
            for index in missing:
                if items[index]["type"] == kind and isinstance(event.get(field), str) and \
                        _same_item(event, items[index], index):
                    items[index] = dict(items[index], **{field: event[field]})
    return [items[index] for index in sorted(items)]


def _same_item(event: Dict[str, Any], item: Dict[str, Any], index: int) -> bool:
    """Whether an item's event is this item's: by item id, else (a server without ids) by output index."""
    if item.get("id") and event.get("item_id"):
        return bool(event["item_id"] == item["id"])
    return bool(event.get("output_index") == index)


def _finished(data: bytes, started: Dict[int, Dict[str, Any]]) -> Dict[int, Dict[str, Any]]:
    """Items the stream added and never finished, with the parts their done events give."""
    if not started:
        return {}
    parts: Dict[Tuple[int, str], Dict[int, Dict[str, Any]]] = {}
    for name, field, position, kind, key in PART_EVENTS:
        for event in _named(data, name):
            index, part = _index(event.get("output_index")), _index(event.get(position))
            if index in started and part is not None:
                parts.setdefault((index, field), {})[part] = {"type": kind, key: _text(event.get(key))}
    items = {}
    for index, item in started.items():
        item = dict(item)
        for (owner, field), found in parts.items():
            if owner == index:
                item[field] = [found[part] for part in sorted(found)]
        items[index] = item
    return items


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
        kind = _text(item.get("type")) if isinstance(item, dict) else ""
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
        reason = _dict(response.get("incomplete_details")).get("reason")
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
        arguments = {"input": _text(item.get("input"))}
    if isinstance(arguments, (dict, list)):  # a server's object instead of its JSON text
        arguments = json.dumps(arguments, ensure_ascii=False, separators=COMPACT)
    # "{}" is the API's text for a call without arguments; "" is no JSON to a client that parses it.
    return {"id": call_id, "type": "function",
            "function": {"name": _text(item.get("name")), "arguments": _text(arguments) or "{}"}}


def _annotations(annotations: Any, offset: int) -> List[Dict[str, Any]]:
    """URL citations with their indexes in the whole content; other kinds have no chat form."""
    found = []
    for note in annotations if isinstance(annotations, list) else ():
        if isinstance(note, dict) and note.get("type") == "url_citation" and all(
                _index(note.get(key)) is not None for key in ("start_index", "end_index")):
            found.append({"type": "url_citation", "url_citation": {
                "end_index": note["end_index"] + offset, "start_index": note["start_index"] + offset,
                "title": _text(note.get("title")), "url": _text(note.get("url"))}})
    return found


def _joined(pieces: Optional[List[str]]) -> Optional[str]:
    return None if pieces is None else "".join(pieces)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _usage(usage: Any) -> Dict[str, Any]:
    """Responses usage in chat terms; zeros where the upstream reported nothing (see chat_completion)."""
    usage = _dict(usage)
    given, spent = _dict(usage.get("input_tokens_details")), _dict(usage.get("output_tokens_details"))
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
