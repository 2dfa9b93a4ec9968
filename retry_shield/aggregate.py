"""Aggregation: a judged, buffered stream turned into the JSON a non-streaming client expects."""

import json
import operator
import re
from itertools import repeat
from typing import Any, Dict, Iterator, List, Match, Optional, Tuple, Union

from .sse import StreamVerdict

Buffer = Union[bytes, memoryview]


# Each data line of a stream: group 1 when it is a chunk that only adds text to the first
# choice, in the compact form most servers stream (no nested object outside the delta), else
# group 2. Such text is taken without parsing its chunk, and a run of them is decoded at once;
# other chunks (roles, tool calls, finish, usage) are parsed.
DATA_LINE = re.compile(rb'^data:[ \t]*(?:\{[^{}\[\]\r\n]*"choices":\[\{"index":0,"delta":\{"content":'
                       rb'"([^"\\\r\n]*(?:\\.[^"\\\r\n]*)*)"\}(?:,"logprobs":null)?,"finish_reason":null\}\]'
                       rb'[^{}\[\]\r\n]*\}[ \t]*\r?$|([^\r\n]*))', re.M)
# The first window of a run of same-shaped chunks (_take_run), in chunks: doubled while the run goes
# on, so that a short run costs little more than its own lines, up to RUN_WINDOW_BYTES. 8 KB measured
# best (16 and 32 KB cost 10 to 17% more; above 30,000 bytes CPython's byte search sets up its two-way
# tables at every separator), and keeps every temporary far below glibc's mmap threshold (buffers.py
# pins it at 128 KB), above which fresh memory costs its page faults each time.
RUN_WINDOW = 4
RUN_WINDOW_BYTES = 8 * 1024
# Runs in a row that took fewer than RUN_WINDOW chunks, after which a stream is read line by line:
# where every chunk differs (OpenAI's "obfuscation" field), trying costs more than it saves.
RUN_MISSES = 4
# The texts of a run joined by newlines, each of which DATA_LINE's group 1 would take: its pattern
# unrolled, with the newline allowed between texts (a text has none; after a backslash it fails).
RUN_TEXTS = re.compile(rb'[^"\\\r]*(?:\\[^\n][^"\\\r]*)*')


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


def assemble_chat_completion(body: Buffer, runs: bool = True) -> Dict[str, Any]:
    """Turn a buffered Chat Completions stream into the ``chat.completion`` a non-streaming client expects.

    ``runs=False`` reads every line with DATA_LINE: the reference the runs (_take_run) are tested against.
    """
    completion: Dict[str, Any] = {"object": "chat.completion", "choices": []}
    choices: Dict[int, Dict[str, Any]] = {}
    texts: List[bytes] = []  # the JSON-escaped text of content-only chunks not yet added
    for payload in _payloads(body, texts, runs):
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


def _payloads(data: Buffer, texts: List[bytes], runs: bool) -> Iterator[bytes]:
    """The payload of each data line that is not a compact content-only chunk, in order; the texts of
    those that are go to ``texts`` as they come. ``data`` is searched where it lies: a copy of a big
    answer would cost its page faults (RUN_WINDOW_BYTES)."""
    misses = 0 if runs else RUN_MISSES  # runs tried that took (almost) nothing, in a row
    line = DATA_LINE.search(data)
    while line is not None:
        if misses >= RUN_MISSES:  # the rest line by line, in one pass
            for line in DATA_LINE.finditer(data, line.start()):
                if line.group(2) is None:
                    texts.append(line.group(1))
                else:
                    yield line.group(2)
            return
        payload = line.group(2)
        if payload is not None:
            yield payload
            line = DATA_LINE.search(data, line.end())
            continue
        texts.append(line.group(1))
        following = DATA_LINE.search(data, line.end())
        if following is not None and following.group(2) is None:
            before = len(texts)
            resume = _take_run(data, line, following, texts)
            if resume is not None:
                following = DATA_LINE.search(data, resume)
            misses = misses + 1 if len(texts) - before < RUN_WINDOW else 0
        line = following


def _take_run(data: Buffer, first: Match[bytes], second: Match[bytes], texts: List[bytes]) -> Optional[int]:
    """After two compact content-only chunks, take the text of every chunk that follows in the same bytes.

    Most servers send the same bytes around every chunk's text (id, model, the blank line), so
    the bytes from one text to the next repeat: ``sep`` = the first chunk's closing and line end,
    the lines between, the second chunk's opening. A window of the stream is cut where each line
    ends and the next begins by one C-speed split; the texts cut out of the pieces must be what
    DATA_LINE's group 1 takes, and the window must be rebuilt from them byte for byte: then each
    such line is one DATA_LINE takes as compact, and its text is taken without a regular
    expression over the line. The texts from the second chunk's on are added to ``texts``; the
    return value is where the line-by-line scan goes on (the line of the first chunk not taken),
    or None when none was.
    """
    sep = bytes(data[first.end(1):second.start(1)])
    if bytes(data[second.end(1):second.end(1) + len(sep)]) != sep:  # the third chunk is not of the same shape
        return None
    # Cut where one chunk's line ends and the next one's begins, at the needle from the first line end
    # through the next line's "data:": short, and of few letters, so the byte search skips along.
    closing = sep[:sep.index(b"\n")]
    cut_end = len(sep) - (second.start(1) - second.start()) + len(b"data:")
    needle, prefix = sep[len(closing):cut_end], sep[cut_end:]
    text_of = operator.itemgetter(slice(len(prefix), -len(closing)))
    # A window starts after a needle: its pieces are prefix + text + closing.
    at = start = second.start() + len(b"data:")
    window = RUN_WINDOW * len(sep)
    while True:
        taken = bytes(data[at:at + window])  # (a memoryview compares a byte at a time: bytes, with memcmp)
        candidates = taken.split(needle)[:-1]  # the last piece is cut by the window or is no such line
        chunk_texts = list(map(text_of, candidates))
        rebuilt = prefix + sep.join(chunk_texts) + closing + needle
        if not taken.startswith(rebuilt):  # the run ends in this window: before its first other line
            del chunk_texts[_leading(map(bytes.startswith, candidates, repeat(prefix))):]
            rebuilt = prefix + sep.join(chunk_texts) + closing + needle
            if not chunk_texts or not taken.startswith(rebuilt):
                break
            candidates = candidates[:len(chunk_texts) + 1]  # the run ends here
        if not _texts_alone(chunk_texts):
            break
        texts.extend(chunk_texts)
        ended = len(chunk_texts) < len(candidates) or at + window >= len(data)  # another line, or the end
        at += len(rebuilt)
        if ended:
            break
        window = min(window * 2, RUN_WINDOW_BYTES)
    return at - len(b"data:") if at > start else None  # the line of the first chunk not taken


def _leading(flags: Iterator[bool]) -> int:
    """How many of ``flags`` are true before the first false one."""
    values = list(flags)
    return values.index(False) if False in values else len(values)


def _texts_alone(pieces: List[bytes]) -> bool:
    """Whether each piece is a text DATA_LINE's group 1 takes: on one line, no bare quote, a backslash always
    before a character of the line, a carriage return only after one (the pieces are joined by newlines)."""
    joined = b"\n".join(pieces)
    return joined.count(b"\n") == len(pieces) - 1 and RUN_TEXTS.fullmatch(joined) is not None


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
