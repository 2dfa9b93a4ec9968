"""SSE inspection: judging a stream as it arrives, the verdict on it, and which errors are final."""

import json
import re
from typing import Iterable, List, NamedTuple, Optional, Tuple, Union

from .buffers import Loan
from .search import byte_finder

TERMINAL_EVENTS = (b"response.completed", b"response.incomplete", b"response.failed")
# Error codes that no retry can fix: the same request fails the same way.
FINAL_ERROR_CODES = frozenset((
    "context_length_exceeded", "insufficient_quota", "invalid_prompt",
    "content_filter", "content_policy_violation", "responsible_ai_policy_violation",
    "invalid_api_key", "model_not_found", "invalid_image", "invalid_request_error",
    "unsupported_parameter", "unsupported_value", "invalid_value", "billing_hard_limit_reached",
))
FINAL_ERROR_TYPES = frozenset(("invalid_request_error", "authentication_error", "permission_error"))
EVENT_TYPE = re.compile(rb'"type"\s*:\s*"([^"]+)"')
FINISH_REASON = re.compile(rb'"finish_reason"\s*:\s*"')
OTHER_PROTOCOL_MARK = {"responses": b'"chat.completion.chunk"', "chat": b'"response.created"'}

Span = Tuple[int, int]


class StreamVerdict(NamedTuple):
    """What a finished stream amounts to.

    ``outcome`` is one of COMPLETE (deliver), INCOMPLETE (deliver: a legitimate
    end such as max_output_tokens), FAILED (deliver: a final error no retry can
    fix), RETRY (an error a retry may fix) or UNFINISHED (no terminator).
    """

    outcome: str
    detail: str = ""
    error: Optional[dict] = None
    usage: Optional[dict] = None
    terminal: Optional[Span] = None  # where the terminal event's JSON sits in the buffer (Responses)

    COMPLETE = "complete"
    INCOMPLETE = "incomplete"
    FAILED = "failed"
    RETRY = "retry"
    UNFINISHED = "unfinished"

    @property
    def deliverable(self) -> bool:
        return self.outcome in (self.COMPLETE, self.INCOMPLETE, self.FAILED)


def is_final_error(error: object) -> bool:
    """Whether an error object from the upstream names a failure that retrying cannot fix."""
    if not isinstance(error, dict):
        return False
    code, kind = error.get("code"), error.get("type")
    return ((isinstance(code, str) and code in FINAL_ERROR_CODES)
            or (isinstance(kind, str) and kind in FINAL_ERROR_TYPES))


def data_json(line: bytes) -> Optional[dict]:
    """The JSON of an SSE ``data:`` line, or None."""
    payload = line[5:].strip() if line.startswith(b"data:") else b""
    try:
        value = json.loads(payload)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def error_text(error: object) -> str:
    if not isinstance(error, dict):
        return str(error)
    code = error.get("code") or error.get("type") or "error"
    return "%s: %s" % (code, error.get("message", ""))


class StreamInspector:
    """Judges an SSE stream as its bytes arrive.

    ``feed`` appends to one buffer and looks only at the new bytes, with a single
    byte search for ``"error"``: inside a JSON string an opening quote is escaped, so
    that sequence is a real key or value, or (rarely) text ending in a quoted "error,
    which the JSON check of its line then clears.
    Terminal events sit at the end of a stream, so ``verdict`` reads only the
    last lines. Total cost is linear in the stream's size.
    """

    ERROR_MARK = b'"error"'

    def __init__(self, protocol: str, buffer: Union[None, bytearray, Loan] = None) -> None:
        self.protocol = protocol  # "responses" or "chat"
        # The stream so far is buffer[:size]; a reused buffer's tail holds stale bytes.
        self.loan = Loan.of(buffer)
        self.size = 0
        self.error: Optional[dict] = None
        self._searched = 0

    @property
    def buffer(self) -> bytearray:
        return self.loan.buffer

    def feed(self, chunk: bytes) -> None:
        self.feed_spans(chunk, ((0, len(chunk)),))

    def feed_spans(self, data: Union[bytes, memoryview], spans: Iterable[Span]) -> None:
        """Append each (start, end) span of ``data``, then judge the new bytes once."""
        for start, stop in spans:
            self.size = self.loan.put(self.size, data, start, stop)
        if self.error is None:
            self._search_errors()

    def speaks_other_protocol(self) -> bool:
        """Whether the stream's first events are of the other protocol (a chat chunk in a Responses
        stream, a Responses event in a chat stream): a wrong API, not a broken stream."""
        mark = OTHER_PROTOCOL_MARK[self.protocol]
        return self.buffer.find(mark, 0, min(self.size, 4096)) >= 0

    @property
    def body(self) -> memoryview:
        """The stream so far, as a view: no copy (released when the loan closes)."""
        return self.loan.view(self.size)

    def _search_errors(self, final: bool = False) -> None:
        """Judge each new ``error"`` that is not ``"error": null``; wait for more bytes when cut short."""
        buf, size = self.buffer, self.size
        mark = self.ERROR_MARK
        find = byte_finder(buf, self._searched, size)
        pos = find(mark, self._searched)
        while pos >= 0:
            value = pos + len(mark)
            if value + 6 > size and not final:
                self._searched = pos
                return
            if not bytes(buf[value:min(value + 6, size)]).lstrip(b": ").startswith(b"null"):
                line_end = buf.find(b"\n", value, size)
                if line_end < 0:
                    if not final:
                        self._searched = pos
                        return
                    line_end = size
                line_start = buf.rfind(b"\n", 0, pos) + 1
                self._judge_error_line(bytes(buf[line_start:line_end]).rstrip(b"\r"))
                if self.error is not None:
                    return
                pos = line_end
            pos = find(mark, pos + 1)
        self._searched = max(self._searched, size - len(mark) + 1)

    def _judge_error_line(self, line: bytes) -> None:
        event = data_json(line)
        if event is None:
            return
        kind = event.get("type")
        if kind == "error":
            error = event.get("error") if isinstance(event.get("error"), dict) else event
            self.error = {key: error.get(key) for key in ("code", "type", "message", "param")}
        elif isinstance(event.get("error"), dict) and not str(kind or "").startswith("response."):
            self.error = dict(event["error"])

    def verdict(self) -> StreamVerdict:
        """Judge the stream as it stands: call once the upstream has finished sending."""
        if self.error is None:
            self._search_errors(final=True)
        if self.error is not None:
            outcome = StreamVerdict.FAILED if is_final_error(self.error) else StreamVerdict.RETRY
            return StreamVerdict(outcome, "error event: " + error_text(self.error), error=self.error)
        if self.protocol == "responses":
            return self._responses_verdict()
        return self._chat_verdict()

    def _last_lines(self, limit: int) -> List[Span]:
        """Spans (start, end) of up to ``limit`` last non-empty, non-comment lines, newest first.

        Spans, not copies: the last line of a long answer can be megabytes long.
        """
        buf = self.buffer
        end = self.size
        spans = []
        while end > 0 and len(spans) < limit:
            line_start = buf.rfind(b"\n", 0, end) + 1
            start, stop = line_start, end
            while start < stop and buf[start] in b" \t\r":
                start += 1
            while stop > start and buf[stop - 1] in b" \t\r":
                stop -= 1
            if stop > start and buf[start] != ord(":"):
                spans.append((start, stop))
            end = line_start - 1
        return spans

    def _head(self, span: Span, size: int) -> bytes:
        return bytes(self.buffer[span[0]:min(span[1], span[0] + size)])

    def _data_spans(self, spans: List[Span]) -> Tuple[List[Span], bool]:
        """The spans of ``data:`` lines, and whether the newest one is ``[DONE]``."""
        data = [span for span in spans if self._head(span, 5) == b"data:"]
        done = bool(data) and self._head(data[0], 16)[5:].strip() == b"[DONE]"
        return data, done

    def _responses_verdict(self) -> StreamVerdict:
        spans = self._last_lines(6)
        data, done = self._data_spans(spans)
        if done:
            data = data[1:]  # some servers add [DONE] after the terminal event
        if not data:
            return StreamVerdict(StreamVerdict.UNFINISHED, "stream ended without response.completed")
        line = data[0]
        name = self._event_name(spans, line)
        if name not in TERMINAL_EVENTS:
            return StreamVerdict(StreamVerdict.UNFINISHED, "stream ended without response.completed")
        if not self._line_is_whole(line):  # the connection dropped inside the last line
            return StreamVerdict(StreamVerdict.UNFINISHED, "stream cut inside %s" % name.decode("ascii", "replace"))
        payload = (line[0] + 5, line[1])
        usage = self._usage(payload)
        if name == b"response.completed":
            return StreamVerdict(StreamVerdict.COMPLETE, "completed", usage=usage, terminal=payload)
        if name == b"response.incomplete":
            return StreamVerdict(StreamVerdict.INCOMPLETE, "incomplete", usage=usage, terminal=payload)
        event = data_json(bytes(self.buffer[line[0]:line[1]])) or {}
        response = event.get("response") if isinstance(event.get("response"), dict) else {}
        error = response.get("error") if isinstance(response.get("error"), dict) else {"code": None}
        outcome = StreamVerdict.FAILED if is_final_error(error) else StreamVerdict.RETRY
        return StreamVerdict(outcome, "response.failed: " + error_text(error), error=error,
                             usage=usage, terminal=payload)

    def _line_is_whole(self, span: Span) -> bool:
        """Whether a data line's JSON is closed and its line ended (an event is dispatched at its end)."""
        buf = self.buffer
        return buf[span[1] - 1] == ord("}") and buf.find(b"\n", span[1], min(span[1] + 2, self.size)) >= 0

    def _event_name(self, spans: List[Span], data: Span) -> Optional[bytes]:
        """The name of the event whose data line is ``data``: its ``event:`` line, else the data's type."""
        index = spans.index(data)
        if index + 1 < len(spans) and self._head(spans[index + 1], 6) == b"event:":
            return self._head(spans[index + 1], 64)[6:].strip()
        match = EVENT_TYPE.search(self.buffer, data[0], min(data[1], data[0] + 512))
        return match.group(1) if match else None

    def _usage(self, span: Span) -> Optional[dict]:
        """The usage object in a JSON line, found from its end so the output text is not parsed."""
        pos = self.buffer.rfind(b'"usage"', span[0], span[1])
        if pos < 0:
            return None
        text = bytes(self.buffer[pos + 7:span[1]]).lstrip(b" :").decode("utf-8", "replace")
        try:
            usage, _ = json.JSONDecoder().raw_decode(text)
        except ValueError:
            return None
        return usage if isinstance(usage, dict) else None

    def _chat_verdict(self) -> StreamVerdict:
        data, done = self._data_spans(self._last_lines(64))
        if not done:
            return StreamVerdict(StreamVerdict.UNFINISHED, "stream ended without data: [DONE]")
        if not any(FINISH_REASON.search(self.buffer, start, end) for start, end in data[1:]):
            return StreamVerdict(StreamVerdict.UNFINISHED, "stream ended without a finish_reason")
        usage = next((self._usage(span) for span in data[1:3]
                      if self.buffer.find(b'"usage"', span[0], span[1]) >= 0), None)
        return StreamVerdict(StreamVerdict.COMPLETE, "completed", usage=usage)
