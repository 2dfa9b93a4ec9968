"""A scripted fake OpenAI-compatible upstream: a real HTTP server on 127.0.0.1:0.

Each POST to a path ending in ``/responses`` or ``/chat/completions`` is one attempt;
attempt *i* acts out outcome *i* of the plan (the last one repeats). Everything sent
and received is recorded so tests can compare bytes exactly. Standard library only:
the benchmark imports it too.
"""

import gzip as gzip_module
import http.server
import json
import math
import socket
import struct
import sys
import threading
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Set

# ---------------------------------------------------------------------------
# Stream builders
# ---------------------------------------------------------------------------


def _split(text, pieces):
    pieces = max(1, min(pieces or 1, len(text) or 1))
    size = -(-len(text) // pieces)
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def _sse(event, data):
    return b"event: " + event.encode() + b"\ndata: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def response_object(text, status="completed", error=None, incomplete_reason=None, usage=True):
    response = {
        "id": "resp_fake", "object": "response", "created_at": 1700000000, "status": status,
        "error": error, "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
        "model": "gpt-fake",
        "output": [{"id": "msg_fake", "type": "message", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]}],
        "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
    }
    if usage:
        response["usage"] = {"input_tokens": 11, "output_tokens": 22, "total_tokens": 33,
                             "input_tokens_details": {"cached_tokens": 0},
                             "output_tokens_details": {"reasoning_tokens": 0}}
    return response


def responses_events(text, deltas=None, usage=True):
    """The events of a good Responses stream, all but the terminal one, as bytes."""
    seq = iter(range(1, 1 << 30))
    pending = dict(response_object("", status="in_progress", usage=False), output=[])
    item = {"id": "msg_fake", "type": "message", "status": "in_progress", "role": "assistant", "content": []}
    part = {"type": "output_text", "text": "", "annotations": []}
    out = [_sse("response.created", {"type": "response.created", "sequence_number": 0, "response": pending}),
           _sse("response.in_progress", {"type": "response.in_progress", "sequence_number": next(seq),
                                         "response": pending}),
           _sse("response.output_item.added", {"type": "response.output_item.added", "sequence_number": next(seq),
                                               "output_index": 0, "item": item}),
           _sse("response.content_part.added", {"type": "response.content_part.added", "sequence_number": next(seq),
                                                "item_id": "msg_fake", "output_index": 0, "content_index": 0,
                                                "part": part})]
    for piece in _split(text, deltas or 8):
        out.append(_sse("response.output_text.delta", {
            "type": "response.output_text.delta", "sequence_number": next(seq), "item_id": "msg_fake",
            "output_index": 0, "content_index": 0, "delta": piece}))
    done_item = dict(item, status="completed", content=[dict(part, text=text)])
    out += [_sse("response.output_text.done", {"type": "response.output_text.done", "sequence_number": next(seq),
                                               "item_id": "msg_fake", "output_index": 0, "content_index": 0,
                                               "text": text}),
            _sse("response.content_part.done", {"type": "response.content_part.done", "sequence_number": next(seq),
                                                "item_id": "msg_fake", "output_index": 0, "content_index": 0,
                                                "part": dict(part, text=text)}),
            _sse("response.output_item.done", {"type": "response.output_item.done", "sequence_number": next(seq),
                                               "output_index": 0, "item": done_item})]
    return b"".join(out), next(seq)


def responses_stream(text="Hello from upstream", deltas=None, usage=True, terminal="response.completed",
                     error=None, incomplete_reason=None):
    """A whole Responses SSE stream ending with ``terminal``."""
    body, seq = responses_events(text, deltas, usage)
    status = {"response.completed": "completed", "response.failed": "failed",
              "response.incomplete": "incomplete"}[terminal]
    response = response_object(text, status=status, error=error, incomplete_reason=incomplete_reason, usage=usage)
    return body + _sse(terminal, {"type": terminal, "sequence_number": seq, "response": response})


def _chunk(delta, finish=None, usage=None, choices=True):
    chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000, "model": "gpt-fake",
             "system_fingerprint": "fp_fake",
             "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else []}
    if usage is not None:
        chunk["usage"] = usage
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def chat_events(text, deltas=None):
    out = [_chunk({"role": "assistant", "content": ""})]
    out += [_chunk({"content": piece}) for piece in _split(text, deltas or 8)]
    return b"".join(out)


def chat_stream(text="Hello from upstream", deltas=None, usage=True, done=True):
    """A whole Chat Completions SSE stream: role, content deltas, finish_reason, usage, [DONE]."""
    body = chat_events(text, deltas) + _chunk({}, finish="stop")
    if usage:
        body += _chunk({}, usage={"prompt_tokens": 11, "completion_tokens": 22, "total_tokens": 33}, choices=False)
    return body + (b"data: [DONE]\n\n" if done else b"")


def chat_error_line(code, message):
    return b"data: " + json.dumps({"error": {"message": message, "type": "server_error", "code": code}}).encode() \
        + b"\n\n"


# ---------------------------------------------------------------------------
# Outcomes
# ---------------------------------------------------------------------------


class Outcome(NamedTuple):
    """What the fake upstream does for one attempt."""

    kind: str
    text: str = "Hello from upstream"
    deltas: Optional[int] = None
    framing: str = "chunked"  # see CHUNKED below: chunked, events, length or close
    gzip: bool = False
    usage: bool = True
    status: int = 200
    body: Any = None
    headers: Optional[Dict[str, str]] = None
    delay: float = 0.0
    seconds: float = 0.0
    after_headers: bool = False
    after_bytes: int = 0
    code: str = ""
    message: str = ""
    reason: str = ""
    trailing: bytes = b""  # sent after the body, beyond its framing (a sloppy server's stray CRLF)
    echo: str = ""  # a top-level key of the request's JSON: its string value is appended to ``text``


# Framings of a streamed body: "chunked" (16 KB chunks), "events" (a chunk per SSE event),
# "length" (Content-Length) and "close" (the end of the body closes the connection).
CHUNKED = ("chunked", "events")


def good(text="Hello from upstream", deltas=None, framing="chunked", gzip=False, usage=True, delay=0.0,
         headers=None, trailing=b"", echo=""):
    """A whole good stream; with ``echo``, its text ends with the request's ``echo`` field (one answer per client)."""
    return Outcome("good", text=text, deltas=deltas, framing=framing, gzip=gzip, usage=usage, delay=delay,
                   headers=headers, trailing=trailing, echo=echo)


def raw(body, framing="chunked", delay=0.0, headers=None):
    """A 200 SSE stream of exactly ``body`` (bytes): any stream a test builds, such as chat tool calls."""
    return Outcome("raw", body=body, framing=framing, delay=delay, headers=headers)


def status(code, body=None, headers=None, delay=0.0):
    if body is None:
        body = {"error": {"message": "fake upstream error %d" % code, "type": "server_error", "code": None}}
    return Outcome("status", status=code, body=body, headers=headers, delay=delay)


def reset(delay=0.0, headers=None):
    """Read the request, then close with a real TCP RST (SO_LINGER 0) and no response.

    ``headers`` is accepted for symmetry and ignored: nothing is sent.
    """
    return Outcome("reset", delay=delay, headers=headers)


def stall(seconds, after_headers=False, after_bytes=0, delay=0.0, headers=None):
    """Send nothing (or the headers, or the first ``after_bytes`` of a good stream) for ``seconds``, then close."""
    return Outcome("stall", seconds=seconds, after_headers=after_headers or after_bytes > 0,
                   after_bytes=after_bytes, delay=delay, headers=headers)


def cut(after_bytes, framing="chunked", delay=0.0, text="Hello from upstream", headers=None):
    """200, the first ``after_bytes`` of a good stream, then close: no chunked terminator / short Content-Length."""
    return Outcome("cut", after_bytes=after_bytes, framing=framing, delay=delay, text=text, headers=headers)


def no_terminator(framing="chunked", delay=0.0, headers=None):
    """A properly framed and closed 200 stream without response.completed (Responses) / [DONE] (Chat)."""
    return Outcome("no_terminator", framing=framing, delay=delay, headers=headers)


def error_event(code="server_error", message="The server had an error while processing your request.",
                delay=0.0, headers=None):
    """A 200 stream with an ``error`` event (Chat: a ``data: {"error": ...}`` line) in the middle."""
    return Outcome("error_event", code=code, message=message, delay=delay, headers=headers)


def failed(code="server_error", message="The model failed to finish.", delay=0.0, headers=None):
    """A 200 stream ending with response.failed (Chat: an error data line, then the end)."""
    return Outcome("failed", code=code, message=message, delay=delay, headers=headers)


def incomplete(reason="max_output_tokens", delay=0.0, headers=None):
    """A 200 Responses stream ending with response.incomplete."""
    return Outcome("incomplete", reason=reason, delay=delay, headers=headers)


def json_error(status=200, code="server_error", message="The server is overloaded.", delay=0.0, headers=None):
    """A non-SSE application/json ``{"error": ...}`` body with ``status``."""
    return Outcome("json_error", status=status, code=code, message=message, delay=delay, headers=headers)


def body_for(outcome, protocol):
    """The SSE body an outcome streams for ``protocol`` ("responses" or "chat")."""
    responses = protocol == "responses"
    if outcome.kind in ("good", "cut", "stall"):
        if responses:
            return responses_stream(outcome.text, outcome.deltas, outcome.usage)
        return chat_stream(outcome.text, outcome.deltas, outcome.usage)
    if outcome.kind == "no_terminator":
        return responses_events(outcome.text)[0] if responses else chat_stream(outcome.text, done=False)
    if outcome.kind == "error_event":
        if responses:
            events = responses_events(outcome.text)[0]
            error = {"type": "error", "sequence_number": 99, "code": outcome.code, "message": outcome.message,
                     "param": None}
            middle = events.index(b"\n\n", len(events) // 2) + 2  # an event boundary, not mid-JSON
            return events[:middle] + _sse("error", error) + events[middle:] + \
                _sse("response.completed", {"type": "response.completed", "sequence_number": 100,
                                            "response": response_object(outcome.text)})
        return chat_events(outcome.text) + chat_error_line(outcome.code, outcome.message) + \
            _chunk({}, finish="stop") + b"data: [DONE]\n\n"
    if outcome.kind == "failed":
        if responses:
            return responses_stream(outcome.text, terminal="response.failed",
                                    error={"code": outcome.code, "message": outcome.message})
        return chat_events(outcome.text) + chat_error_line(outcome.code, outcome.message)
    if outcome.kind == "incomplete":
        return responses_stream(outcome.text, terminal="response.incomplete", incomplete_reason=outcome.reason)
    raise ValueError("outcome %s has no stream" % outcome.kind)


# ---------------------------------------------------------------------------
# Server
# ---------------------------------------------------------------------------


class RecordedRequest(NamedTuple):
    method: str
    path: str
    query: str
    headers: Dict[str, str]
    body: bytes
    json: Any
    time: float
    peer: Any = None  # the client's (host, port): the same port twice means a reused connection


MODELS = {"object": "list", "data": [{"id": "gpt-fake", "object": "model", "created": 0, "owned_by": "fake"}]}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # like a real server: small answers leave at once

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    def setup(self):
        super().setup()
        self.server.fake.connections.add(self.connection)

    def finish(self):
        self.server.fake.connections.discard(self.connection)
        super().finish()

    def handle_one_request(self):
        try:
            super().handle_one_request()
        except (ConnectionError, socket.timeout, OSError):
            self.close_connection = True

    def _record(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        path, _, query = self.path.partition("?")
        seen = RecordedRequest(self.command, path, query, {k.lower(): v for k, v in self.headers.items()},
                               body, parsed, time.monotonic(), self.client_address)
        self.seen = seen
        return self.server.fake.record(seen)

    def do_GET(self):
        self._record()
        if self.path.partition("?")[0].endswith("/models"):
            self._send_plain(200, json.dumps(MODELS).encode(), "application/json")
        else:
            self._send_plain(404, b'{"error": {"message": "not found"}}', "application/json")

    def do_POST(self):
        fake = self.server.fake
        index = self._record()
        path = self.path.partition("?")[0]
        if not (path.endswith("/responses") or path.endswith("/chat/completions")):
            self._send_plain(404, b'{"error": {"message": "not found"}}', "application/json")
            return
        outcome = fake.outcome(index)
        allowed, limit_headers = fake.admit()
        if not allowed:
            self._send_plain(429, rate_limited_body(limit_headers), "application/json", limit_headers)
            return
        if limit_headers:
            outcome = outcome._replace(headers=dict(outcome.headers or {}, **limit_headers))
        if outcome.echo:
            request = self.seen.json if isinstance(self.seen.json, dict) else {}
            outcome = outcome._replace(text=outcome.text + str(request.get(outcome.echo, "")))
        if outcome.delay and fake.stopping.wait(outcome.delay):
            return
        protocol = "responses" if path.endswith("/responses") else "chat"
        if protocol not in fake.speaks:  # as a real chat-only (or Responses-only) server answers
            body = json.dumps({"error": {"message": "Invalid URL (POST %s)" % path, "type": "invalid_request_error",
                                         "param": None, "code": None}}).encode()
            fake.sent_body(body)
            self._send_plain(404, body, "application/json")
            return
        getattr(self, "_act_" + outcome.kind)(outcome, protocol, fake)

    # -- acts -----------------------------------------------------------------

    def _send_plain(self, code, body, content_type, headers=None):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _start_stream(self, outcome, framing, length=None):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        for name, value in (outcome.headers or {}).items():
            self.send_header(name, value)
        if outcome.gzip:
            self.send_header("Content-Encoding", "gzip")
        if framing in CHUNKED:
            self.send_header("Transfer-Encoding", "chunked")
        elif framing == "length":
            self.send_header("Content-Length", str(length))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()

    def _write(self, data, framing, chunk_size=16384):
        if framing == "events":  # a chunk per SSE event, as Azure OpenAI sends a stream
            pieces = [piece + b"\n\n" for piece in data.split(b"\n\n") if piece]
        else:
            pieces = [data[start:start + chunk_size] for start in range(0, len(data), chunk_size)]
        for piece in pieces:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if framing in CHUNKED else piece)

    def _finish(self, framing):
        if framing in CHUNKED:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _stream(self, outcome, body, fake):
        wire = gzip_module.compress(body) if outcome.gzip else body
        fake.sent_body(body)  # before writing: the client may have it all before this thread runs again
        self._start_stream(outcome, outcome.framing, len(wire))
        self._write(wire, outcome.framing)
        self._finish(outcome.framing)
        if outcome.trailing:
            self.wfile.write(outcome.trailing)
            self.close_connection = True  # what follows on this connection is not HTTP any more

    def _act_good(self, outcome, protocol, fake):
        self._stream(outcome, body_for(outcome, protocol), fake)

    _act_no_terminator = _act_error_event = _act_failed = _act_incomplete = _act_good

    def _act_raw(self, outcome, protocol, fake):
        self._stream(outcome, outcome.body, fake)

    def _act_status(self, outcome, protocol, fake):
        body = outcome.body if isinstance(outcome.body, bytes) else json.dumps(outcome.body).encode()
        fake.sent_body(body)
        self._send_plain(outcome.status, body, "application/json", outcome.headers)

    def _act_json_error(self, outcome, protocol, fake):
        body = json.dumps({"error": {"message": outcome.message, "type": "server_error",
                                     "code": outcome.code}}).encode()
        fake.sent_body(body)
        self._send_plain(outcome.status, body, "application/json", outcome.headers)

    def _act_reset(self, outcome, protocol, fake):
        fake.sent_body(b"")
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # Close here: socketserver's shutdown_request would send a FIN (SHUT_WR) before the RST.
        self.rfile.close()
        self.connection.close()

    def _act_cut(self, outcome, protocol, fake):
        body = body_for(outcome, protocol)
        fake.sent_body(body[:outcome.after_bytes])
        self._start_stream(outcome, outcome.framing, len(body))
        self._write(body[:outcome.after_bytes], outcome.framing)
        self.wfile.flush()
        self.close_connection = True

    def _act_stall(self, outcome, protocol, fake):
        body = body_for(outcome, protocol)
        fake.sent_body(body[:outcome.after_bytes])
        if outcome.after_headers:
            self._start_stream(outcome, "chunked")
            self._write(body[:outcome.after_bytes], "chunked")
            self.wfile.flush()
        fake.stopping.wait(outcome.seconds)
        self.close_connection = True


class RateLimit(NamedTuple):
    """A deployment's request quota: ``count`` attempts per ``window`` seconds, beyond which it answers 429.

    A window opens with the first attempt after the last window closed; only the attempts it
    admits count. ``retry_after``: a 429 carries ``Retry-After``, the whole seconds until the
    window closes, and says so in its message (as Azure OpenAI's do). ``reset_headers``: every
    answer carries ``x-ratelimit-limit-requests``, ``x-ratelimit-remaining-requests`` and
    ``x-ratelimit-reset-requests`` (``"850ms"``), as OpenAI's do.
    """

    count: int
    window: float
    retry_after: bool = True
    reset_headers: bool = False


def rate_limited_body(headers):
    """The JSON error of a 429 from the quota, worded as Azure OpenAI words it."""
    hint = " Please retry after %s second%s." % (headers["Retry-After"], "" if headers["Retry-After"] == "1" else "s") \
        if "Retry-After" in headers else ""
    return json.dumps({"error": {"code": "429", "message": "Requests to the Responses Operation have exceeded the "
                                 "call rate limit of your current pricing tier." + hint}}).encode()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 4096

    def handle_error(self, request, client_address):
        """Clients that hang up are routine here: no traceback for socket errors."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class FakeUpstream:
    """The scripted upstream. Use as a context manager or call start() and stop()."""

    def __init__(self, port=0, tls=None, speaks=("responses", "chat")):
        self._port = port
        self.tls = tls  # a server-side ssl.SSLContext: serve https://localhost
        self.speaks = speaks  # the APIs it serves; a POST to the other's path gets a 404
        self._lock = threading.Lock()
        self._plan: List[Outcome] = [good()]
        self.requests: List[RecordedRequest] = []
        self.sent: List[bytes] = []
        self.attempts = 0
        self.rate_limit: Optional[RateLimit] = None
        # The rate limit's time: a test that moves it itself sees windows open and close exactly.
        self.clock: Callable[[], float] = time.monotonic
        self.window_opened = 0.0
        self.window_used = 0
        self.limited = 0  # 429s the rate limit answered
        self.stopping = threading.Event()
        self.connections: Set[socket.socket] = set()
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    # -- life -----------------------------------------------------------------

    def start(self):
        self.stopping.clear()
        self._server = _Server(("127.0.0.1", self._port), _Handler)
        self._server.fake = self
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Stop like a killed server: the listener and every open connection, kept-alive ones too."""
        self.stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for connection in list(self.connections):
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    @property
    def port(self):
        return self._server.server_address[1]

    @property
    def url(self):
        if self.tls is not None:
            return "https://localhost:%d" % self.port
        return "http://127.0.0.1:%d" % self.port

    # -- script and record ------------------------------------------------------

    def plan(self, *outcomes):
        """Act out ``outcomes`` on the next attempts, in order; the last repeats."""
        with self._lock:
            self._plan = list(outcomes) or [good()]
            self.attempts = 0

    def limit(self, count, window, retry_after=True, reset_headers=False):
        """Answer 429 beyond ``count`` attempts per ``window`` seconds (see RateLimit); ``limited`` counts them."""
        with self._lock:
            self.rate_limit = RateLimit(count, window, retry_after, reset_headers)
            self.window_used = 0
            self.window_opened = float("-inf")
            self.limited = 0

    def admit(self):
        """Whether the rate limit lets one more attempt through now, and the headers its answer carries."""
        with self._lock:
            limit = self.rate_limit
            if limit is None:
                return True, {}
            now = self.clock()
            if now >= self.window_opened + limit.window:
                self.window_opened, self.window_used = now, 0
            allowed = self.window_used < limit.count
            self.window_used += allowed
            self.limited += not allowed
            reset = self.window_opened + limit.window - now
            headers = {}
            if limit.reset_headers:
                headers.update({"x-ratelimit-limit-requests": str(limit.count),
                                "x-ratelimit-remaining-requests": str(limit.count - self.window_used),
                                "x-ratelimit-reset-requests": "%dms" % math.ceil(reset * 1000)})
            if not allowed and limit.retry_after:
                headers["Retry-After"] = str(max(1, math.ceil(reset)))
            return allowed, headers

    def outcome(self, index):
        with self._lock:
            return self._plan[min(index, len(self._plan) - 1)]

    def record(self, seen):
        """Keep a request; return its attempt index (POSTs to the two operations only)."""
        with self._lock:
            self.requests.append(seen)
            if seen.method == "POST" and seen.path.endswith(("/responses", "/chat/completions")):
                self.attempts += 1
                return self.attempts - 1
            return -1

    def sent_body(self, body):
        with self._lock:
            self.sent.append(body)

    def reset(self):
        with self._lock:
            self.requests = []
            self.sent = []
            self.attempts = 0

    def wait_attempts(self, count, timeout=10.0):
        """Wait until ``count`` attempts arrived; raise AssertionError at the deadline."""
        deadline = time.monotonic() + timeout
        while self.attempts < count:
            if time.monotonic() > deadline:
                raise AssertionError("upstream saw %d attempts, expected %d" % (self.attempts, count))
            time.sleep(0.01)
