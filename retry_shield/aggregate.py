"""Aggregation: a judged, buffered stream turned into the JSON a non-streaming client expects."""

import json
import re
from typing import Any, Dict, List, Tuple, Union

from .sse import StreamVerdict


# Each data line of a stream: group 1 when it is a chunk that only adds text to the first
# choice, in the compact form most servers stream (no nested object outside the delta), else
# group 2. Such text is taken without parsing its chunk, and a run of them is decoded at once;
# other chunks (roles, tool calls, finish, usage) are parsed.
DATA_LINE = re.compile(rb'^data:[ \t]*(?:\{[^{}\[\]\r\n]*"choices":\[\{"index":0,"delta":\{"content":'
                       rb'"([^"\\\r\n]*(?:\\.[^"\\\r\n]*)*)"\}(?:,"logprobs":null)?,"finish_reason":null\}\]'
                       rb'[^{}\[\]\r\n]*\}[ \t]*\r?$|([^\r\n]*))', re.M)


def stream_as_json(body: Union[bytes, memoryview], verdict: StreamVerdict) -> Tuple[int, Any]:
    """The status and JSON value a non-streaming client gets for a deliverable stream.

    A final error is answered as the API answers a non-streaming request; a Responses
    stream becomes the response object of its terminal event; a Chat Completions
    stream is assembled into one ``chat.completion``. None as the value: the terminal
    event is not valid JSON.
    """
    if verdict.outcome == StreamVerdict.FAILED:
        status = 429 if (verdict.error or {}).get("code") == "insufficient_quota" else 400
        return status, {"error": verdict.error}
    if verdict.terminal:
        try:
            event = json.loads(bytes(body[verdict.terminal[0]:verdict.terminal[1]]))
        except ValueError:
            return 502, None
        return 200, event.get("response", event)
    return 200, assemble_chat_completion(body)


def assemble_chat_completion(body: Union[bytes, memoryview]) -> Dict[str, Any]:
    """Turn a buffered Chat Completions stream into the ``chat.completion`` a non-streaming client expects."""
    completion: Dict[str, Any] = {"object": "chat.completion", "choices": []}
    choices: Dict[int, Dict[str, Any]] = {}
    texts: List[bytes] = []  # the JSON-escaped text of content-only chunks not yet added
    for line in DATA_LINE.finditer(bytes(body)):
        payload = line.group(2)
        if payload is None:
            texts.append(line.group(1))
            continue
        payload = payload.strip()
        _add_texts(choices, texts)
        if payload == b"[DONE]":
            continue
        try:
            chunk = json.loads(payload)
        except ValueError:
            continue
        if not isinstance(chunk, dict):
            continue
        for key in ("id", "created", "model", "system_fingerprint", "service_tier"):
            # Azure's filter-only chunks carry "" for id and model: they must not blank the real ones.
            if chunk.get(key) is not None and chunk[key] != "":
                completion[key] = chunk[key]
        if chunk.get("usage") and isinstance(chunk["usage"], dict):
            completion["usage"] = chunk["usage"]
        for delta_choice in _dicts(chunk.get("choices")):
            _merge_choice(choices, delta_choice)
    _add_texts(choices, texts)
    completion["choices"] = [_finish_choice(choices[index]) for index in sorted(choices)]
    return completion


def _add_texts(choices: Dict[int, Dict[str, Any]], texts: List[bytes]) -> None:
    """Add the pending JSON-escaped texts to the first choice's content, decoded in one go."""
    if not texts:
        return
    try:
        text = json.loads(b'"' + b"".join(texts) + b'"', strict=False)
    except ValueError:  # one bad escape: decode them one by one and drop only that one, as a chunk that
        text = "".join(_decoded(piece) for piece in texts)  # does not parse is dropped
    _choice(choices, 0)["parts"].setdefault("content", []).append(text)
    texts.clear()


def _decoded(text: bytes) -> str:
    try:
        return json.loads(b'"' + text + b'"', strict=False)
    except ValueError:
        return ""


def _choice(choices: Dict[int, Dict[str, Any]], index: int) -> Dict[str, Any]:
    return choices.setdefault(index, {"index": index, "message": {"role": "assistant"},
                                      "parts": {}, "tools": {}, "finish_reason": None})


def _dicts(values: Any) -> List[Dict[str, Any]]:
    """The objects of a JSON list; a server's odd value (a string, a number, null) is no object."""
    return [value for value in values if isinstance(value, dict)] if isinstance(values, list) else []


def _merge_choice(choices: Dict[int, Dict[str, Any]], delta_choice: Dict[str, Any]) -> None:
    index = delta_choice.get("index", 0)
    choice = _choice(choices, index if isinstance(index, int) else 0)
    delta = delta_choice.get("delta")
    delta = delta if isinstance(delta, dict) else {}
    for field in ("content", "refusal"):
        if isinstance(delta.get(field), str):
            choice["parts"].setdefault(field, []).append(delta[field])
    # DeepSeek streams the chain of thought as reasoning_content, OpenRouter as reasoning; a
    # server that sends both in one delta sends the same text twice, so one is taken.
    reasoning = delta.get("reasoning_content")
    if not isinstance(reasoning, str):
        reasoning = delta.get("reasoning")
    if isinstance(reasoning, str):
        choice["parts"].setdefault("reasoning_content", []).append(reasoning)
    if delta.get("role") and isinstance(delta["role"], str):
        choice["message"]["role"] = delta["role"]
    for position, call in enumerate(_dicts(delta.get("tool_calls"))):
        slot = choice["tools"].setdefault(_call_index(choice["tools"], call, position),
                                          {"type": "function", "arguments": [], "function": {}})
        if call.get("id"):
            slot["id"] = call["id"]
        if call.get("type"):
            slot["type"] = call["type"]
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        if function.get("name"):
            slot["function"]["name"] = function["name"]
        arguments = function.get("arguments")
        if arguments:
            # Arguments sent as a JSON object instead of its text would break the join.
            slot["arguments"].append(arguments if isinstance(arguments, str) else json.dumps(arguments))
    if delta_choice.get("finish_reason") and isinstance(delta_choice["finish_reason"], str):
        choice["finish_reason"] = delta_choice["finish_reason"]
    logprobs = delta_choice.get("logprobs")
    if isinstance(logprobs, dict):
        merged = choice.setdefault("logprobs", {"content": None, "refusal": None})
        for key in ("content", "refusal"):
            if isinstance(logprobs.get(key), list):
                if merged[key] is None:
                    merged[key] = []
                merged[key].extend(logprobs[key])


def _call_index(tools: Dict[int, Dict[str, Any]], call: Dict[str, Any], position: int) -> int:
    """The slot of a tool-call delta: its index, else (servers that leave it out) a new id opens a new call."""
    index = call.get("index")
    if isinstance(index, int):
        return index
    if not tools:
        return position
    last = max(tools)
    if call.get("id") and tools[last].get("id") not in (None, call["id"]):
        return last + 1
    return last


def _finish_choice(choice: Dict[str, Any]) -> Dict[str, Any]:
    message = choice["message"]
    message["content"] = "".join(choice["parts"]["content"]) if "content" in choice["parts"] else None
    message["refusal"] = "".join(choice["parts"]["refusal"]) if "refusal" in choice["parts"] else None
    if "reasoning_content" in choice["parts"]:  # only when streamed: a plain answer keeps its usual keys
        message["reasoning_content"] = "".join(choice["parts"]["reasoning_content"])
    if choice["tools"]:
        message["tool_calls"] = []
        for index in sorted(choice["tools"]):
            slot = choice["tools"][index]
            function = dict(slot["function"], arguments="".join(slot["arguments"]))
            call = {"id": slot.get("id"), "type": slot["type"], "function": function}
            message["tool_calls"].append(call)
    return {"index": choice["index"], "message": message, "logprobs": choice.get("logprobs"),
            "finish_reason": choice["finish_reason"]}
