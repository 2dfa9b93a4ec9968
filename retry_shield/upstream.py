"""The way upstream: kept-alive connections, one attempt, reading its answer into a loan, judging it."""

import http.client
import json
import select
import socket
import ssl
import threading
import time
import urllib.parse
import zlib
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Set, Tuple, Union

from .buffers import READ_CHUNK, BufferPool, Loan
from .errors import ClientGone, UpstreamFailure
from .http1 import ChunkedDecoder, content_decoder
from .retry import RETRYABLE_STATUSES
from .sse import StreamInspector, StreamVerdict, error_text, is_final_error

# http.client's own buffer, which reads the status line and headers; the body bypasses it.
HEADER_BUFFER = 16 * 1024
# How often a long upstream read or backoff wait checks that the client is still there.
CLIENT_CHECK_INTERVAL = 0.25
# OpenSSL's reasons when an https:// endpoint answers in plain HTTP: no retry changes that.
WRONG_API = {
    "responses": "the upstream answered a Responses request with a Chat Completions stream: it speaks only "
                 "Chat Completions; set UPSTREAM_API=chat",
    "chat": "the upstream answered a Chat Completions request with a Responses stream: it speaks only the "
            "Responses API; set UPSTREAM_API=responses",
}
NOT_TLS = frozenset(("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "PACKET_LENGTH_TOO_LONG"))
STOPPING = "the proxy is stopping"
CUT_SHORT = "cut short: the proxy is stopping"


class UpstreamAnswer(NamedTuple):
    """A finished attempt to hand to the client: good, or final as the upstream sent it.

    A stream's ``body`` is a view of a pooled buffer, given back when the answer is
    used as a context manager and its block ends.
    """

    status: int
    headers: List[Tuple[str, str]]
    body: Union[bytes, memoryview]
    verdict: Optional[StreamVerdict]  # None: not a stream (passed through as it came)
    loan: Optional[Loan] = None  # the buffer behind ``body``, if it is a view

    def __enter__(self) -> "UpstreamAnswer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.give_back()

    def give_back(self) -> None:
        """Return the buffer behind ``body`` to the pool; the answer is not to be read after."""
        if self.loan is not None:
            self.loan.close()


def kb(size: int) -> str:
    return "%d bytes" % size if size < 1024 else "%d KB" % (size // 1024)


def reason_of(exc: BaseException) -> str:
    """What an OSError says (its strerror), else the name of the exception."""
    return getattr(exc, "strerror", None) or exc.__class__.__name__


def readable(sock: socket.socket) -> bool:
    """Whether ``sock`` has data or an end of stream waiting, without blocking."""
    if hasattr(select, "poll"):  # select() fails on descriptors above 1023, which a busy proxy reaches
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([sock], [], [], 0)[0])


class HeadersOnlyResponse(http.client.HTTPResponse):
    """An upstream answer whose http.client reader has a known buffer size.

    ``AnswerReader`` reads the body itself: first what this buffer holds after the
    headers, then straight from the socket into its own buffers.
    """

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        self.fp.close()  # nothing was read through the stdlib's reader yet
        self.fp = sock.makefile("rb", HEADER_BUFFER)


def open_connection(url: str, connect_timeout: float) -> http.client.HTTPConnection:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=connect_timeout, context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=connect_timeout)
    conn.response_class = HeadersOnlyResponse
    return conn


def target_of(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return (parts.path or "/") + ("?" + parts.query if parts.query else "")


class ConnectionPool:
    """Idle keep-alive connections to the upstream: a request reuses one instead of
    connecting anew (on TLS, a handshake saved)."""

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self._idle: List[Tuple[str, http.client.HTTPConnection]] = []
        self._lock = threading.Lock()

    def take(self, origin: str) -> Optional[http.client.HTTPConnection]:
        """An idle connection to ``origin`` still open at the other end, or None."""
        while True:
            with self._lock:
                found = next((index for index, (key, _) in enumerate(self._idle) if key == origin), None)
                if found is None:
                    return None
                _, conn = self._idle.pop(found)
            if conn.sock is not None and not readable(conn.sock):  # readable while idle: closed upstream
                return conn
            conn.close()

    def give(self, origin: str, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self.size:
                self._idle.append((origin, conn))
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for _, conn in idle:
            conn.close()


def _connect(conn: http.client.HTTPConnection, connect_timeout: float) -> None:
    """Connect, turning each way it fails into an UpstreamFailure (TLS mistakes are final)."""
    try:
        conn.connect()
    except socket.timeout:
        raise UpstreamFailure("timeout", "connect timed out after %ss" % connect_timeout) from None
    except ssl.SSLCertVerificationError as exc:  # no retry makes it trusted
        raise UpstreamFailure("tls", "the upstream's TLS certificate is not trusted (%s); check "
                              "AZURE_ENDPOINT, or set SSL_CERT_FILE to your CA bundle"
                              % exc.verify_message, retryable=False) from None
    except ssl.SSLError as exc:
        if exc.reason not in NOT_TLS:
            raise UpstreamFailure("connect", "TLS handshake failed: %s" % (exc.reason or exc,)) from None
        raise UpstreamFailure("tls", "the upstream does not speak TLS (%s); use http:// in "
                              "AZURE_ENDPOINT for a plain HTTP upstream" % exc.reason, retryable=False) from None
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:  # the resolver did not answer (offline, for one): the network's
            raise UpstreamFailure("connect", "cannot resolve %s for now (%s)" % (conn.host, exc.strerror)) from None
        raise UpstreamFailure("dns", "cannot resolve %s; check AZURE_ENDPOINT" % conn.host) from None
    except OSError as exc:
        raise UpstreamFailure("connect", "cannot connect: %s" % (exc.strerror or exc,)) from None


class Upstream:
    """Everything one server needs to reach the upstream: kept-alive connections, answer
    buffers, and the sockets in use, so that a stopping server can cut them short."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.pool = ConnectionPool()
        self.buffers = BufferPool()
        self.open_sockets: Set[socket.socket] = set()
        self.stopped = False  # set by cut(): the server is stopping, no attempt goes out any more

    def attempt(self, method: str, url: str, body: Optional[bytes], headers: Mapping[str, str],
                protocol: Optional[str], deadline: float, still_wanted: Callable[[], bool],
                fresh: bool = False, on_headers: Optional[Callable[[], None]] = None) -> UpstreamAnswer:
        """Make one upstream attempt and read its whole answer.

        Returns an UpstreamAnswer the client may receive; raises UpstreamFailure for
        anything worth another attempt (or a final proxy-side failure), and ClientGone
        when ``still_wanted()`` turns false while reading. ``protocol`` is the SSE
        protocol to judge the answer by, or None for an answer passed on as it comes.
        ``fresh``: on a new connection, not a kept-alive one. ``on_headers`` is called once the
        status line and headers have arrived (``--check`` times the first byte with it).

        A kept-alive connection found dead before the request was written whole is
        dropped and the request goes out on another: nothing reached the upstream, so
        that is no attempt. Once the request is written, the upstream may have it (and
        bill it): a connection lost after that is a failed attempt, ``reused`` if it
        was a kept-alive one.
        """
        config = self.config
        origin = url.split("/", 3)[2]
        while True:
            if self.stopped:
                raise UpstreamFailure("stopping", STOPPING)
            conn = None if fresh else self.pool.take(origin)
            reused = conn is not None
            if conn is None:
                conn = open_connection(url, config.connect_timeout)
            sock = response = None
            kept = False
            try:
                if not reused:
                    _connect(conn, config.connect_timeout)
                sock = conn.sock  # kept: http.client drops conn.sock when the answer is close-delimited
                sock.settimeout(max(0.001, min(config.upstream_timeout, deadline - time.monotonic())))
                self.open_sockets.add(sock)
                if self.stopped:  # cut() ran before this socket was in open_sockets
                    raise UpstreamFailure("stopping", STOPPING)
                try:
                    conn.request(method, target_of(url), body=body, headers=dict(headers))
                except socket.timeout:
                    raise UpstreamFailure("timeout", "sending the request timed out after %ss"
                                          % config.upstream_timeout, reused=reused) from None
                except (OSError, http.client.HTTPException) as exc:
                    if reused and not self.stopped:
                        continue  # closed by the upstream while idle: the request never left whole
                    raise UpstreamFailure("reset", "connection lost while sending the request: %s"
                                          % reason_of(exc)) from None
                try:
                    response = conn.getresponse()
                except socket.timeout:
                    raise UpstreamFailure("timeout", "no answer within %ss" % config.upstream_timeout,
                                          reused=reused) from None
                except (OSError, http.client.HTTPException) as exc:
                    raise UpstreamFailure("reset", "connection lost before the answer%s: %s" % (
                        " on a kept-alive connection" if reused else "", reason_of(exc)), reused=reused) from None
                if on_headers is not None:
                    on_headers()
                reader = AnswerReader(config, response, protocol, self.buffers)
                answer = None
                try:
                    reader.read(sock, deadline, still_wanted)
                    answer = judge(response.status, response.getheaders(), reader.content_type, reader.inspector,
                                   protocol)
                finally:
                    if answer is None or answer.loan is None:
                        reader.inspector.loan.close()
                if reader.finished and not response.will_close:
                    response.close()  # the reader only: the connection stays open for the next request
                    self.pool.give(origin, conn)
                    kept = True
                return answer
            except UpstreamFailure as failure:
                if self.stopped and failure.kind != "stopping":  # what cut() did, not what the upstream did
                    raise UpstreamFailure("stopping", CUT_SHORT, reused=failure.reused) from None
                raise
            finally:
                self.open_sockets.discard(sock)
                if not kept:
                    if response is not None:
                        response.close()
                    conn.close()

    def cut(self) -> None:
        """Shut every upstream socket in use: their reads end at once, as failed attempts; none begins after."""
        self.stopped = True
        for sock in list(self.open_sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.pool.close()


class AnswerReader:
    """Reads an upstream body after its headers into a pooled buffer, judging it as it comes.

    http.client's own body reader copies each chunk three times and parses chunk
    framing a line at a time; this one reads up to READ_CHUNK bytes per system call
    into a scratch buffer and copies only the body bytes, once, into the answer.
    """

    def __init__(self, config: Any, response: http.client.HTTPResponse, protocol: Optional[str],
                 buffers: BufferPool) -> None:
        self.config = config
        self.response = response
        self.buffers = buffers
        self.content_type = (response.getheader("Content-Type") or "").lower()
        self.decoder = content_decoder(response.getheader("Content-Encoding"))
        self.inspector = StreamInspector(protocol or "", buffers.lend(biggest=True))
        self.framing = ChunkedDecoder() if response.chunked else None
        self.left = response.length  # None: until the upstream closes, or the last chunk
        self.finished = False

    def read(self, sock: socket.socket, deadline: float, still_wanted: Callable[[], bool]) -> None:
        """Read to the end of the body; raise UpstreamFailure or ClientGone."""
        config = self.config
        next_check = time.monotonic() + CLIENT_CHECK_INTERVAL
        try:
            with self.buffers.lend() as loan:
                scratch = loan.buffer
                size = 0
                if self.left != 0:  # Content-Length: 0, a 204 or a 304 has no body to wait for
                    # What http.client's reader holds past the headers first: asking it for more
                    # than it holds would make it block on the socket for the rest.
                    first = self.response.fp.read1(HEADER_BUFFER if self.left is None
                                                   else min(HEADER_BUFFER, self.left))
                    scratch[:len(first)] = first
                    size = len(first)
                with memoryview(scratch) as view:
                    while size:
                        complete = self._take(scratch, view, size)
                        if self.inspector.size > config.max_response_bytes:
                            raise UpstreamFailure("too_large", "upstream answer over MAX_RESPONSE_BYTES (%d bytes); "
                                                  "raise MAX_RESPONSE_BYTES" % config.max_response_bytes,
                                                  retryable=False)
                        if complete:
                            break
                        now = time.monotonic()
                        if now >= next_check:
                            if not still_wanted():
                                raise ClientGone()
                            next_check = now + CLIENT_CHECK_INTERVAL
                            sock.settimeout(max(0.001, min(config.upstream_timeout, deadline - now)))
                        want = READ_CHUNK if self.left is None else min(READ_CHUNK, self.left)
                        size = self.response.fp.readinto1(view[:want])
            if (self.framing is not None and not self.framing.done) or self.left:
                raise http.client.IncompleteRead(b"", self.left)
            if self.decoder is not None:
                self.inspector.feed(self.decoder.flush())
            self.finished = True
        except socket.timeout:
            raise UpstreamFailure("timeout", "upstream silent for %ss after %s" % (
                config.upstream_timeout, kb(self.inspector.size))) from None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise UpstreamFailure("cut", "stream cut after %s (%s)" % (
                kb(self.inspector.size), exc.__class__.__name__), status=self.response.status) from None
        except zlib.error:
            raise UpstreamFailure("cut", "corrupt compressed answer after %s" % kb(self.inspector.size)) from None

    def _take(self, scratch: bytearray, view: memoryview, size: int) -> bool:
        """Pass ``size`` raw bytes of ``scratch`` on to the inspector; True once the body is complete."""
        if self.left is not None:
            self.left -= size
        spans = [(0, size)] if self.framing is None else self.framing.feed(scratch, 0, size)
        if self.decoder is None:
            self.inspector.feed_spans(view, spans)
        else:
            for start, end in spans:
                self.inspector.feed(self.decoder.decompress(view[start:end]))
        return self.left == 0 or (self.framing is not None and self.framing.done)


def judge(status: int, headers: List[Tuple[str, str]], content_type: str, inspector: StreamInspector,
          protocol: Optional[str] = "responses") -> UpstreamAnswer:
    """Turn a fully read answer into an UpstreamAnswer to deliver, or raise UpstreamFailure.

    With ``protocol`` None the answer is not judged: it is passed on as it came.
    """
    if protocol is None:
        return UpstreamAnswer(status, headers, bytes(inspector.body), None)
    # An error or a JSON answer is parsed below, which needs bytes; a stream is delivered as a view.
    body = bytes(inspector.body) if status != 200 or "json" in content_type else b""
    header_map = {name.lower(): value for name, value in headers}
    if status != 200:
        error = json_error(body)
        message = error.get("message", "") if error else ""
        retryable = status in RETRYABLE_STATUSES or status >= 500
        if not retryable:
            return UpstreamAnswer(status, headers, body, None)
        raise UpstreamFailure("status", "HTTP %d%s" % (status, (": " + error_text(error)) if error else ""),
                              status=status, headers=header_map, body=body, message=message)
    if "json" in content_type:
        error = json_error(body)
        if error is None:  # an upstream that does not stream: pass its answer through
            return UpstreamAnswer(status, headers, body, None)
        if is_final_error(error):
            return UpstreamAnswer(status, headers, body, None)
        raise UpstreamFailure("json_error", "JSON error instead of a stream: " + error_text(error),
                              status=status, headers=header_map, body=body,
                              message=str(error.get("message", "")))
    verdict = inspector.verdict()
    if verdict.deliverable:
        return UpstreamAnswer(status, headers, inspector.body, verdict, inspector.loan)
    if verdict.outcome == StreamVerdict.UNFINISHED:
        if inspector.speaks_other_protocol():
            raise UpstreamFailure("wrong_api", WRONG_API[protocol], retryable=False)
        raise UpstreamFailure("unterminated", "%s (%s)" % (verdict.detail, kb(inspector.size)))
    raise UpstreamFailure("stream_error", verdict.detail, headers=header_map,
                          message=str((verdict.error or {}).get("message") or ""))


def json_error(body: bytes) -> Optional[Dict[str, Any]]:
    """The ``error`` object of a JSON body, if it is one."""
    try:
        value = json.loads(bytes(body))
    except ValueError:
        return None
    if isinstance(value, dict) and value.get("error"):
        error = value["error"]
        return error if isinstance(error, dict) else {"message": str(error)}
    return None
