"""Reading a judged Responses stream back into its final response object, output items recovered."""

import json
import re
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

Span = Tuple[int, int]
TERMINAL_STATUS = {b"response.completed": "completed", b"response.incomplete": "incomplete",
                   b"response.failed": "failed"}
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


def as_text(value: Any) -> str:
    """``value`` if it is a string, else an empty one: a field of the upstream's JSON, read defensively."""
    return value if isinstance(value, str) else ""


def as_dict(value: Any) -> Dict[str, Any]:
    """``value`` if it is an object, else an empty one."""
    return value if isinstance(value, dict) else {}


def as_index(value: Any) -> Optional[int]:
    """``value`` if it is an index (an integer, not negative, not a bool), else None."""
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
        index = as_index(event.get("output_index"))
        if index is not None and isinstance(event.get("item"), dict):
            items[index] = event["item"]
    for index, item in enumerate(listed if isinstance(listed, list) else ()):
        if isinstance(item, dict):
            items.setdefault(index, item)
    added = _event_spans(data, b"response.output_item.added")
    if len(added) > len(items):  # an item added and never finished: its parts from their done events
        started = {}
        for event in _events(data, added):
            index = as_index(event.get("output_index"))
            if index is not None and index not in items and isinstance(event.get("item"), dict):
                started[index] = event["item"]
        items.update(_finished(data, started))
    missing = {index for index, item in items.items() if as_text(item.get("type")) in STREAMED_FIELD
               and not as_text(item.get(STREAMED_FIELD[item["type"]][0]))}
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
            index, part = as_index(event.get("output_index")), as_index(event.get(position))
            if index in started and part is not None:
                parts.setdefault((index, field), {})[part] = {"type": kind, key: as_text(event.get(key))}
    items = {}
    for index, item in started.items():
        item = dict(item)
        for (owner, field), found in parts.items():
            if owner == index:
                item[field] = [found[part] for part in sorted(found)]
        items[index] = item
    return items
