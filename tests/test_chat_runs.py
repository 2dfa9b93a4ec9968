"""Runs of same-shaped chat chunks taken at C speed (aggregate._take_run) give exactly what reading every line gives."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from retry_shield.aggregate import DATA_LINE, _take_run, assemble_chat_completion
from retry_shield.chat_answer import chat_to_response, response_events
from retry_shield.chat_request import to_chat

HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
PLAN = to_chat({"model": "m", "input": "hi", "stream": True})[1]


def chunk(delta, finish=None, head=None, ascii_only=True, **extra):
    value = dict(head or HEAD, choices=[{"index": 0, "delta": delta, "finish_reason": finish}], **extra)
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=ascii_only)
    return b"data: " + text.encode("utf-8", "surrogatepass") + b"\n\n"


def stream(texts, **options):
    return (chunk({"role": "assistant", "content": ""}) + b"".join(chunk({"content": text}, **options)
                                                                   for text in texts)
            + chunk({}, finish="stop") + b"data: [DONE]\n\n")


def both_ways(body):
    fast, reference = assemble_chat_completion(body), assemble_chat_completion(body, runs=False)
    assert fast == reference
    assert response_events(chat_to_response(body, PLAN, "x", 1)) == response_events(
        chat_to_response(memoryview(bytearray(body)), PLAN, "x", 1))
    return fast


def test_a_stream_of_same_shaped_chunks_is_one_run():
    texts = ["word %d " % number for number in range(500)]
    body = stream(texts)
    first = DATA_LINE.search(body, DATA_LINE.search(body).end())  # the role chunk is not compact
    second = DATA_LINE.search(body, first.end())
    taken = []
    resume = _take_run(body, first, second, taken)
    assert [piece.decode() for piece in taken] == texts[1:]
    assert body[resume:] == chunk({}, finish="stop") + b"data: [DONE]\n\n"  # the scan goes on at the finish chunk
    assert both_ways(body)["choices"][0]["message"]["content"] == "".join(texts)


def test_a_run_ends_at_a_chunk_of_another_shape_and_starts_again():
    tool = chunk({"content": "T", "tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": ""}}]})
    body = (stream(["a%d" % number for number in range(40)])[:-len(b"data: [DONE]\n\n")] + tool
            + b"".join(chunk({"content": "b%d" % number}) for number in range(40)) + b"data: [DONE]\n\n")
    (choice,) = both_ways(body)["choices"]
    assert choice["message"]["content"] == "".join("a%d" % n for n in range(40)) + "T" + "".join(
        "b%d" % n for n in range(40))


# Pieces of text that could fool a byte-level reading: quotes, escapes, a lone backslash, braces, line ends,
# a surrogate pair split over two chunks, non-ASCII text.
TRICKY = st.sampled_from(["", "a", " the", '"', "\\", "\\n", "{", "}]", "\n", "\r", "\u00e9t\u00e9", "\ud83d", "\ude00",
                          "\U0001f600", '","', '"}', "data: x"])
# Lines that can stand between chunks, or replace one: comments, another head, CRLF, a bad escape, a tool call.
ODD_LINES = st.sampled_from([
    b": keep-alive\n\n",
    chunk({"content": "H"}, head=dict(HEAD, model="other")),
    chunk({"content": "C"})[:-2].replace(b"\n", b"") + b"\r\n\r\n",
    chunk({"content": "Q"}).replace(b'"Q"', b'"\\q"'),
    chunk({"content": "E"}).replace(b'"E"', b'"\\"'),
    chunk({"content": "R"}).replace(b'"R"', b'"a\rb"'),
    chunk({"content": "Z"}).replace(b'"Z"', b'"x","y"'),  # no JSON: dropped, not taken as the text x","y
    chunk({"content": "L"}, logprobs=None),
    chunk({"content": "T", "tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}]}),
    b"event: x\ndata: " + json.dumps(dict(HEAD, choices=[{"index": 0, "delta": {"content": "V"},
                                                          "finish_reason": None}]), separators=(",", ":")).encode()
    + b"\n\n",
    b"data: not json\n\n",
])


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.one_of(st.lists(TRICKY, min_size=1, max_size=30), ODD_LINES), max_size=8),
       ascii_only=st.booleans())
def test_runs_give_what_every_line_read_gives(parts, ascii_only):
    body = chunk({"role": "assistant", "content": ""})
    for part in parts:
        body += part if isinstance(part, bytes) else b"".join(chunk({"content": text}, ascii_only=ascii_only)
                                                              for text in part)
    body += chunk({}, finish="stop") + b"data: [DONE]\n\n"
    both_ways(body)


def test_a_stream_whose_chunks_all_differ_is_read_line_by_line_after_a_few_tries(monkeypatch):
    """OpenAI's chunks end in a random "obfuscation" field: no two are alike, so runs are not tried for long."""
    from retry_shield import aggregate
    tried = []
    take_run = aggregate._take_run
    monkeypatch.setattr(aggregate, "_take_run", lambda *args: tried.append(1) or take_run(*args))
    texts = ["t%d" % number for number in range(300)]
    body = stream(texts, obfuscation="x")  # alike: one run
    for number in range(len(texts)):  # each of another length
        tail = b'"t%d"},"finish_reason":null}],"obfuscation":"' % number
        body = body.replace(tail + b'x"', tail + b"x" * (number % 7 + 1) + b'"')
    assert assemble_chat_completion(body)["choices"][0]["message"]["content"] == "".join(texts)
    assert len(tried) == aggregate.RUN_MISSES
    assert both_ways(body)
