"""Chat Completions streams as chat upstreams send them, for the adapter's tests: text, reasoning, tool calls."""

import json

USAGE = {"prompt_tokens": 11, "completion_tokens": 22, "total_tokens": 33,
         "prompt_tokens_details": {"cached_tokens": 5}, "completion_tokens_details": {"reasoning_tokens": 7}}


def chunk(delta, finish=None, usage=None, choices=True, model="chat-model"):
    """One ``data:`` line of a chat.completion.chunk."""
    value = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000, "model": model,
             "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else []}
    if usage is not None:
        value["usage"] = usage
    return b"data: " + json.dumps(value, separators=(",", ":")).encode() + b"\n\n"


def pieces(text, count):
    size = max(1, -(-len(text) // max(1, count)))
    return [text[start:start + size] for start in range(0, len(text), size)]


def chat_answer(text="", reasoning="", calls=(), finish=None, usage=USAGE, split=3, model="chat-model"):
    """A whole chat stream: role, reasoning deltas, content deltas, tool calls (``(id, name, arguments)``,
    each split over chunks with id and name on the first only), the finish reason, usage, [DONE]."""
    out = [chunk({"role": "assistant", "content": ""}, model=model)]
    out += [chunk({"reasoning_content": piece}, model=model) for piece in pieces(reasoning, split)]
    out += [chunk({"content": piece}, model=model) for piece in pieces(text, split)]
    for index, (call_id, name, arguments) in enumerate(calls):
        parts = pieces(arguments, split) or [""]
        out.append(chunk({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                          "function": {"name": name, "arguments": parts[0]}}]}, model=model))
        out += [chunk({"tool_calls": [{"index": index, "function": {"arguments": part}}]}, model=model)
                for part in parts[1:]]
    finish = finish or ("tool_calls" if calls else "stop")
    out.append(chunk({}, finish=finish, model=model))
    if usage is not None:
        out.append(chunk({}, usage=usage, choices=False, model=model))
    return b"".join(out) + b"data: [DONE]\n\n"


def chat_error(code="context_length_exceeded", message="too long"):
    """A stream that ends in an error line, as chat servers report a failure inside a 200."""
    return chunk({"role": "assistant", "content": ""}) + b"data: " + json.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "code": code}}).encode() + b"\n\n"
