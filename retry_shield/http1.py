"""HTTP/1.1 details: the strict chunked decoder for both directions, request bodies, and which headers pass."""

import re
import zlib
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import ClientError

HOP_BY_HOP = frozenset((
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "proxy-connection", "te", "trailer", "trailers", "transfer-encoding", "upgrade",
))
# Headers the proxy sets itself, in either direction.
NOT_FORWARDED_REQUEST = HOP_BY_HOP | {"host", "content-length", "accept-encoding"}
NOT_FORWARDED_RESPONSE = HOP_BY_HOP | {"content-length", "content-encoding", "date", "server"}
CREDENTIAL_HEADERS = frozenset(("authorization", "api-key"))

CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")  # int(..., 16) alone would take "+2", "0x2" and "1_0"
CHUNK_HEAD = re.compile(rb"([0-9A-Fa-f]{1,16})\r\n")  # the usual size line

Bytes = Union[bytes, bytearray, memoryview]
Span = Tuple[int, int]
HeaderPairs = Sequence[Tuple[str, str]]


class ChunkedDecoder:
    """Takes HTTP/1.1 chunked framing off a body read in pieces of any size.

    ``feed(data, start, end)`` returns the (start, end) spans of ``data`` that are body
    bytes, without copying them; ``done`` turns true after the last chunk and its
    trailers, and ``stopped_at`` tells where the body ended. Malformed framing raises
    ValueError. Both directions use it: upstream answers and chunked client requests.
    """

    MAX_LINE = 4096

    def __init__(self) -> None:
        self.left = 0  # body bytes still due in the current chunk
        self.after_data = False  # the line ending a chunk's data is due
        self.trailers = False
        self.done = False
        self._line = b""  # a line cut short by the end of a read
        self.stopped_at = 0  # where the last feed stopped: after the body's end once done

    def feed(self, data: Bytes, start: int, end: int) -> List[Span]:
        spans: List[Span] = []
        pos = start
        while pos < end and not self.done:
            if self.left:
                stop = min(end, pos + self.left)
                spans.append((pos, stop))
                self.left -= stop - pos
                pos = stop
                if self.left:
                    break
                if pos + 2 <= end and data[pos:pos + 2] == b"\r\n":
                    pos += 2
                    continue
                self.after_data = True
            elif not (self._line or self.after_data or self.trailers):
                head = CHUNK_HEAD.match(data, pos, end)
                if head is not None:  # the usual case, a chunk per event: no line machinery
                    size = int(head.group(1), 16)
                    if size:
                        pos = head.end()
                        stop = pos + size
                        if stop + 2 <= end and data[stop:stop + 2] == b"\r\n":
                            spans.append((pos, stop))
                            pos = stop + 2
                        else:
                            self.left = size
                        continue
            eol = data.find(b"\n", pos, end)
            if eol < 0:
                self._line += bytes(data[pos:end])
                if len(self._line) > self.MAX_LINE:
                    raise ValueError("chunk size line over %d bytes" % self.MAX_LINE)
                pos = end
                break
            line, self._line = (self._line + bytes(data[pos:eol])).strip(), b""
            pos = eol + 1
            self._take_line(line)
        self.stopped_at = pos
        return spans

    def _take_line(self, line: bytes) -> None:
        if self.after_data:
            if line:
                raise ValueError("chunk data longer than its size")
            self.after_data = False
        elif self.trailers:
            self.done = not line
        else:
            size_text = line.split(b";", 1)[0].strip()
            if not CHUNK_SIZE.fullmatch(size_text):
                raise ValueError("bad chunk size %r" % line[:40])
            size = int(size_text, 16)
            self.trailers = size == 0
            self.left = size


def read_chunked_body(rfile, limit: int) -> bytes:
    """A chunked request body read from ``rfile`` through the same strict decoder as answers.

    Only the body's own bytes are taken from ``rfile``: what follows (a pipelined
    request) stays there. Raises ClientError.
    """
    decoder = ChunkedDecoder()
    parts: List[bytes] = []
    size = 0
    while not decoder.done:
        data = rfile.peek(65536)
        if not data:
            raise ClientError(400, "request body ended before its last chunk", "incomplete_body")
        try:
            spans = decoder.feed(data, 0, len(data))
        except ValueError as exc:
            raise ClientError(400, "malformed chunked request body: %s" % exc, "bad_chunked_body") from None
        size += sum(stop - start for start, stop in spans)
        if size + decoder.left > limit:
            raise ClientError(413, "request body is over MAX_REQUEST_BYTES (%d)" % limit, "request_too_large")
        parts.extend(data[start:stop] for start, stop in spans)
        rfile.read(decoder.stopped_at)
    return b"".join(parts)


def read_request_body(rfile, headers: Mapping[str, str], limit: int) -> bytes:
    """The request body as the client framed it (Content-Length or chunked); raises ClientError."""
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        return read_chunked_body(rfile, limit)
    length = headers.get("Content-Length")
    if length is None:
        raise ClientError(411, "Content-Length is required", "length_required")
    if not length.strip().isdigit():
        raise ClientError(400, "Content-Length %r is not a number" % length, "bad_content_length")
    size = int(length)
    if size > limit:
        raise ClientError(413, "request body of %d bytes is over MAX_REQUEST_BYTES (%d)" % (size, limit),
                          "request_too_large")
    raw = rfile.read(size)
    if len(raw) < size:
        raise ClientError(400, "request body ended after %d of %d bytes" % (len(raw), size), "incomplete_body")
    return raw


def upstream_headers(client_headers: HeaderPairs, api_key: str, drop_credentials: bool = False) -> Dict[str, str]:
    """The headers to send upstream: the client's, minus hop-by-hop ones, with our credentials.

    The client's own credentials pass only when no key is configured and they are
    not the proxy's own key (``drop_credentials``).
    """
    connection_tokens = {token.strip().lower() for name, value in client_headers
                         if name.lower() == "connection" for token in value.split(",")}
    headers = {}
    for name, value in client_headers:
        lower = name.lower()
        if lower in NOT_FORWARDED_REQUEST or lower in connection_tokens:
            continue
        if (api_key or drop_credentials) and lower in CREDENTIAL_HEADERS:
            continue
        headers[name] = value
    if api_key:
        headers["api-key"] = api_key
        headers["Authorization"] = "Bearer " + api_key
    headers["Accept-Encoding"] = "identity"
    return headers


def passed_headers(pairs: HeaderPairs) -> List[Tuple[str, str]]:
    """The upstream's response headers worth passing on; framing and Content-Type are set anew."""
    return [(name, value) for name, value in pairs
            if name.lower() not in NOT_FORWARDED_RESPONSE and name.lower() != "content-type"]


def header(pairs: HeaderPairs, name: str, default: str) -> str:
    """The value of header ``name`` (lower case) in ``pairs``, or ``default``."""
    return next((value for key, value in pairs if key.lower() == name), default)


def content_decoder(encoding: Optional[str]):
    """A decompressor for a Content-Encoding the proxy undoes (gzip, deflate), or None."""
    encoding = (encoding or "identity").strip().lower()
    if encoding in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(32 + zlib.MAX_WBITS)  # gzip or zlib header, detected
    return None
