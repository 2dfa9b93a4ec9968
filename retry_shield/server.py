"""The server: settings, the upstream, counters built from Exchange records, /health, and draining."""

import collections
import contextlib
import http.server
import logging
import os
import socket
import sys
import threading
import time
import urllib.parse
from typing import Any, Callable, Dict, Iterator, Mapping, Sequence, Tuple

from . import SERVICE_NAME, __version__
from .buffers import BufferPool, keep_big_buffers_in_mmap
from .errors import UpstreamFailure
from .handler import ShieldHandler
from .http1 import upstream_headers
from .prepare import Outbound
from .quirks import Quirks
from .recent import Recent
from .replies import Reply, answer_reply, error_reply
from .retry import RetryPolicy
from .routes import Access, check_access, mask_secrets, upstream_url
from .shield import GAVE_UP, SUMMARY, Exchange, credentials_warning, run, summary, upstream_attempts, waiter
from .status_page import page_reply, render
from .upstream import Upstream
from .usage import usage_record

logger = logging.getLogger(__name__)


class ShieldServer(http.server.ThreadingHTTPServer):
    """The threading HTTP server with the settings, upstream, counters and shutdown state the handler uses."""

    daemon_threads = True
    block_on_close = False  # drain() waits for requests in flight; idle keep-alive threads need no join
    # The stdlib's backlog of 5 refuses bursts of parallel agents.
    request_queue_size = 4096

    def __init__(self, config: Any, handler: type = ShieldHandler) -> None:
        keep_big_buffers_in_mmap()  # every server, in its own process or in a test's, runs with it
        self.config = config
        self.retry_policy = RetryPolicy.from_config(config)
        self.upstream = Upstream(config)
        self.quirks = Quirks()
        self.started = time.monotonic()
        self.stopping = threading.Event()  # no new attempt or wait begins
        self.hurry = threading.Event()  # stop_now(): the drain cuts requests in flight short at once
        self._lock = threading.Lock()
        self._counters: Dict[str, int] = collections.Counter()
        self._apis: Dict[str, int] = collections.Counter()  # requests by "client->upstream" protocol
        self.recent = Recent()  # the status page's last requests and per-minute counts
        self._active = 0
        super().__init__((config.host, config.port), handler)

    @property
    def buffers(self) -> BufferPool:
        return self.upstream.buffers

    # -- what the handler asks -------------------------------------------------

    def check_access(self, headers: Mapping[str, str], needs_key: bool, browser: bool = False) -> Access:
        return check_access(headers, self.config, self.server_address[1], needs_key, browser)

    def shield(self, method: str, path: str, outbound: Outbound, started: float,
               still_wanted: Callable[[], bool]) -> Exchange:
        """Run the shield for one prepared request; the Exchange holds what to answer."""
        config = self.config
        make_attempt = upstream_attempts(self.upstream, outbound, started + config.total_timeout, still_wanted,
                                         config.max_attempts, self.quirks)
        return run(Exchange.of(method, path, outbound, started), make_attempt, waiter(self.stopping, still_wanted),
                   self.retry_policy, self.stopping.is_set)

    def models(self, query: str, client_headers: Sequence[Tuple[str, str]],
               still_wanted: Callable[[], bool]) -> Reply:
        """The upstream's model list, through the same connections as every attempt; asked once."""
        config = self.config
        url = upstream_url(config.endpoint, "/models", query)
        headers = upstream_headers(client_headers, config.api_key, drop_credentials=bool(config.proxy_api_key))
        try:
            answer = self.upstream.attempt("GET", url, None, headers, None,
                                           time.monotonic() + config.upstream_timeout, still_wanted)
        except UpstreamFailure as failure:
            return error_reply(502, "cannot list models upstream: %s" % failure.detail, "upstream_error",
                               kind="proxy_error")
        return answer_reply(answer, wants_stream=False)

    def record(self, exchange: Exchange) -> None:
        """Count, keep for the status page, and log a finished exchange."""
        ended = time.time()
        kept = usage_record(exchange, ended)
        with self._lock:
            self.recent.add(kept, ended)
            self._counters["requests"] += 1
            self._counters["retries"] += exchange.retries
            self._counters["gave_up"] += exchange.outcome == GAVE_UP
            self._apis[exchange.client_protocol + "->" + exchange.upstream_protocol] += 1
        logger.info(SUMMARY, *summary(exchange))
        refused = credentials_warning(exchange, self.config)
        if refused:
            logger.warning("%s", refused)

    def count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counters[name] += amount

    @contextlib.contextmanager
    def in_flight(self) -> Iterator[None]:
        with self._lock:
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1

    @property
    def active(self) -> int:
        with self._lock:
            return self._active

    def health(self) -> Dict[str, Any]:
        with self._lock:
            counters = dict(self._counters)
            apis = dict(self._apis)
            active = self._active
        return {
            "status": "ok",
            "service": SERVICE_NAME,
            "version": __version__,
            "pid": os.getpid(),
            "port": self.server_address[1],
            "uptime_s": round(time.monotonic() - self.started, 1),
            "upstream": urllib.parse.urlsplit(self.config.endpoint).hostname,
            "upstream_api": self.config.upstream_api,
            "apis": apis,
            "requests": counters.get("requests", 0),
            "retries": counters.get("retries", 0),
            "gave_up": counters.get("gave_up", 0),
            "in_flight": active,
        }

    def status_page(self) -> Reply:
        """The status page now; keys masked again in case a client sent one as a model name."""
        now = time.time()
        health = self.health()
        with self._lock:
            records = self.recent.records()
            minutes = self.recent.per_minute(now)
        return page_reply(mask_secrets(render(health, records, minutes, now), self.config.secrets))

    # -- the stdlib's hooks ----------------------------------------------------

    def handle_error(self, request: Any, client_address: Tuple[str, int]) -> None:
        """Log one line, never a traceback on the user's terminal unless --debug."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, socket.timeout)):
            logger.debug("client %s: %s", client_address[0], exc.__class__.__name__)
            return
        logger.error("internal error serving %s: %r", client_address[0], exc,
                     exc_info=logger.isEnabledFor(logging.DEBUG))

    def service_actions(self) -> None:
        """Called by serve_forever about every half second."""
        self.buffers.trim()

    def server_close(self) -> None:
        super().server_close()
        self.upstream.close()

    def stop_now(self) -> None:
        """End the grace of ``drain`` (running or to come): requests in flight are answered at once."""
        self.stopping.set()
        self.hurry.set()

    def drain(self, grace: float) -> None:
        """Let requests in flight finish within ``grace`` seconds (less after ``stop_now``), then cut
        their upstream reads short.

        Backoff waits end at once; a request still reading after ``grace`` has its upstream
        socket shut. Either way the client gets a clean 503 ``proxy_stopping`` instead of a
        dropped connection.
        """
        self.stopping.set()
        end = time.monotonic() + grace
        while self.active and time.monotonic() < end and not self.hurry.is_set():
            self.hurry.wait(0.05)
        self.upstream.cut()
        end = time.monotonic() + 1.0
        while self.active and time.monotonic() < end:
            time.sleep(0.05)
