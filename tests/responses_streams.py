"""Responses streams as the Responses API sends them, for the reverse adapter's tests: reasoning, text, calls.

Each item is streamed with the API's events in its order (``output_item.added``, its parts' added /
delta / done events, ``output_item.done``), every event with ``event:`` and ``data:`` lines and a
``sequence_number``; the terminal event carries the whole ``response`` with its output and usage.
"""

import json

MODEL = "gpt-5-codex"
USAGE = {"input_tokens": 1200, "input_tokens_details": {"cached_tokens": 1024},
         "output_tokens": 300, "output_tokens_details": {"reasoning_tokens": 256}, "total_tokens": 1500}
COMPACT = (",", ":")
CALL_EVENTS = {"function_call": ("arguments", "function_call_arguments")}


def pieces(text, count):
    size = max(1, -(-len(text) // max(1, count)))
    return [text[start:start + size] for start in range(0, len(text), size)] or [""]


def message(text, id="msg_1"):
    """A finished assistant message item with one output_text part."""
    return {"id": id, "type": "message", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}]}


def reasoning(*summary, id="rs_1"):
    """A finished reasoning item with its summary parts (what the API streams when a summary is asked for)."""
    return {"id": id, "type": "reasoning", "summary": [{"type": "summary_text", "text": text} for text in summary],
            "encrypted_content": None}


def function_call(name, arguments, call_id="call_1", id="fc_1"):
    """A finished function_call item."""
    return {"id": id, "type": "function_call", "status": "completed", "arguments": arguments, "call_id": call_id,
            "name": name}


def response(status="completed", output=(), usage=USAGE, error=None, reason=None, model=MODEL):
    """The ``response`` object of a terminal event (or, in_progress and without output, of the first events)."""
    return {"id": "resp_0a1b2c", "object": "response", "created_at": 1700000000, "status": status,
            "background": False, "error": error, "incomplete_details": {"reason": reason} if reason else None,
            "instructions": None, "max_output_tokens": None, "model": model, "output": list(output),
            "parallel_tool_calls": True, "previous_response_id": None, "reasoning": {"effort": "medium",
                                                                                   "summary": None},
            "service_tier": "default", "store": False, "temperature": 1.0, "text": {"format": {"type": "text"}},
            "tool_choice": "auto", "tools": [], "top_p": 1.0, "truncation": "disabled", "usage": usage,
            "metadata": {}}


def stream(*items, status="completed", usage=USAGE, error=None, reason=None, deltas=3, model=MODEL,
           args_in_item=True, args_done=True, event_lines=True, terminal_output=True):
    """A whole Responses stream of ``items``, each streamed as the API streams it, then the terminal event.

    ``args_in_item=False``: a call's ``output_item.done`` has empty arguments, which then arrive only in
    ``response.function_call_arguments.done``; ``args_done=False``: no such event, the arguments are only
    in ``output_item.done`` (servers send either); ``event_lines=False``: ``data:`` lines only, the event
    named by its ``type`` (some gateways); ``terminal_output=False``: the terminal event's output is empty
    (some servers), so the items are only in their ``output_item.done`` events. The terminal's output
    holds the items as their ``output_item.done`` gave them.
    """
    events = []

    def add(kind, **fields):
        data = dict(type=kind, sequence_number=len(events), **fields)
        line = b"data: " + json.dumps(data, separators=COMPACT, ensure_ascii=False).encode("utf-8") + b"\n\n"
        events.append((b"event: " + kind.encode() + b"\n" if event_lines else b"") + line)

    finished = []  # each item as its output_item.done gives it
    pending = response("in_progress", usage=None, model=model)
    add("response.created", response=pending)
    add("response.in_progress", response=pending)
    for index, item in enumerate(items):
        where = {"item_id": item["id"], "output_index": index}
        kind = item["type"]
        if kind == "message":
            add("response.output_item.added", output_index=index, item=dict(item, status="in_progress", content=[]))
            for number, part in enumerate(item["content"]):
                at = dict(where, content_index=number)
                add("response.content_part.added", part=dict(part, text=""), **at)
                for piece in pieces(part["text"], deltas):
                    add("response.output_text.delta", delta=piece, logprobs=[], **at)
                add("response.output_text.done", text=part["text"], logprobs=[], **at)
                add("response.content_part.done", part=part, **at)
            finished.append(item)
        elif kind == "reasoning":
            add("response.output_item.added", output_index=index, item=dict(item, summary=[]))
            for number, part in enumerate(item["summary"]):
                at = dict(where, summary_index=number)
                add("response.reasoning_summary_part.added", part=dict(part, text=""), **at)
                for piece in pieces(part["text"], deltas):
                    add("response.reasoning_summary_text.delta", delta=piece, **at)
                add("response.reasoning_summary_text.done", text=part["text"], **at)
                add("response.reasoning_summary_part.done", part=part, **at)
            finished.append(item)
        elif kind in CALL_EVENTS:
            field, name = CALL_EVENTS[kind]
            add("response.output_item.added", output_index=index,
                item=dict(item, status="in_progress", **{field: ""}))
            for piece in pieces(item[field], deltas):
                add("response.%s.delta" % name, delta=piece, **where)
            if args_done:
                add("response.%s.done" % name, **{field: item[field]}, **where)
            finished.append(item if args_in_item else dict(item, **{field: ""}))
        else:
            raise ValueError("no events for items of type %r" % kind)
        add("response.output_item.done", output_index=index, item=finished[-1])
    terminal = {"completed": "response.completed", "incomplete": "response.incomplete",
                "failed": "response.failed"}[status]
    add(terminal, response=response(status, finished if terminal_output else [], usage, error, reason, model))
    return b"".join(events)


def answer(text="", thoughts=(), calls=(), deltas=3, usage=USAGE, model=MODEL, **terminal):
    """A whole stream: a reasoning item (with ``thoughts`` as its summary), a message (when there is text),
    then a function_call per ``(call_id, name, arguments)``."""
    items = [reasoning(*thoughts)] if thoughts else []
    if text:
        items.append(message(text))
    items += [function_call(name, arguments, call_id, "fc_%d" % number)
              for number, (call_id, name, arguments) in enumerate(calls)]
    return stream(*items, deltas=deltas, usage=usage, model=model, **terminal)


def incomplete(text, reason="max_output_tokens"):
    """A stream cut short by the server: ``response.incomplete`` with its reason, the text so far."""
    item = dict(message(text), status="incomplete")
    return stream(item, status="incomplete", reason=reason)


def failed(code="context_length_exceeded", message="Your input exceeds the context window of this model."):
    """A stream that ends in ``response.failed`` with a final code and no output, as the API reports it."""
    return stream(status="failed", usage=None, error={"code": code, "message": message})


def error_event(code="context_length_exceeded", message="Your input exceeds the context window of this model.",
                sequence_number=99):
    """An ``error`` event, in the flat form the Responses API streams it."""
    data = {"type": "error", "sequence_number": sequence_number, "code": code, "message": message, "param": None}
    return b"event: error\ndata: " + json.dumps(data, separators=COMPACT).encode("utf-8") + b"\n\n"
