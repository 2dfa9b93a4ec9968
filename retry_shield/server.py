"""The server: settings, the upstream, counters built from Exchange records, /health, and draining."""

import collections
import contextlib
import http.server
import logging
import math
import os
import socket
import sys
import threading
import time
import urllib.parse
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple

from . import SERVICE_NAME, __version__
from .buffers import BufferPool, keep_big_buffers_in_mmap
from .endpoints import Endpoint
from .errors import UpstreamFailure
from .failover import CoolDowns, FailoverSettings, MakeAttempt, Route, hold_cool_down
from .handler import ShieldHandler
from .http1 import upstream_headers
from .pacing import Pacer, Pacers, hold_from_headers
from .prepare import Outbound
from .quirks import Quirks
from .recent import Recent
from .replies import Reply, answer_reply, error_reply
from .retry import RetryPolicy
from .routes import Access, check_access, mask_secrets, upstream_url
from .shield import GAVE_UP, SUMMARY, Exchange, credentials_warning, run, summary, upstream_attempts, waiter
from .stats import Stats
from .status_page import page_reply, render
from .upstream import Upstream
from .usage import iso_time, usage_record
from .usage_log import UsageLog

# Prepares a client's request for an endpoint (prepare.prepare with the request's own arguments bound).
PrepareFor = Callable[[Endpoint], Outbound]

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
        self.endpoints = config.endpoints  # the primary, then the fallbacks; each attempt goes to one of them
        self.cool_downs = CoolDowns(len(self.endpoints))
        self.failover = FailoverSettings(config.failover_after_wait, config.failover_after_failures)
        self.pacers = Pacers()  # per endpoint: RPM_LIMIT and the upstream's rate-limit holds, across requests
        self.started = time.monotonic()
        self.stopping = threading.Event()  # no new attempt or wait begins
        self.hurry = threading.Event()  # stop_now(): the drain cuts requests in flight short at once
        self._lock = threading.Lock()
        self._counters: Dict[str, int] = collections.Counter()
        self._apis: Dict[str, int] = collections.Counter()  # requests by "client->upstream" protocol
        self._served = [0] * len(self.endpoints)  # requests answered by each endpoint
        self._failed = [0] * len(self.endpoints)  # attempts at each endpoint that did not answer the client
        self.recent = Recent()  # the status page's last requests and per-minute counts
        self._active = 0
        self._stats = Stats()  # since start, for /stats
        self.started_at = time.time()
        self.usage_log = UsageLog(config.usage_log) if config.usage_log else None  # ConfigError: it cannot open
        try:
            super().__init__((config.host, config.port), handler)
        except OSError:
            self.close_usage_log()
            raise

    @property
    def buffers(self) -> BufferPool:
        return self.upstream.buffers

    # -- what the handler asks -------------------------------------------------

    def check_access(self, headers: Mapping[str, str], needs_key: bool, browser: bool = False) -> Access:
        return check_access(headers, self.config, self.server_address[1], needs_key, browser)

    def shield(self, method: str, path: str, outbound: Outbound, started: float,
               still_wanted: Callable[[], bool], prepare_for: Optional[PrepareFor] = None) -> Exchange:
        """Run the shield for one prepared request; the Exchange holds what to answer.

        ``outbound`` is the request for the primary; with fallbacks, ``prepare_for`` makes it for
        another endpoint when the request first goes there.
        """
        config = self.config
        deadline = started + config.total_timeout

        def pacer_of(index: int) -> Pacer:
            return self.pacers.pacer_for(self.endpoints[index])

        def attempts_at(prepared: Outbound, index: int) -> MakeAttempt:
            # Every attempt to endpoint ``index`` goes through this one callable; its pacer reads the answers.
            return upstream_attempts(self.upstream, prepared, deadline, still_wanted, config.max_attempts,
                                     self.quirks, observe=self._observer(index, pacer_of(index)))

        def pace(index: int) -> Tuple[str, float]:
            return pacer_of(index).wait_turn(started, deadline, still_wanted, self.stopping)

        def prepared(index: int) -> Tuple[Outbound, MakeAttempt]:
            assert prepare_for is not None
            fallback = prepare_for(self.endpoints[index])
            return fallback, attempts_at(fallback, index)

        route = None
        if len(self.endpoints) > 1 and prepare_for is not None:
            route = Route(self.endpoints, self.cool_downs, self.failover, prepared)
        return run(Exchange.of(method, path, outbound, started), attempts_at(outbound, 0),
                   waiter(self.stopping, still_wanted), self.retry_policy, self.stopping.is_set, route=route,
                   pace=pace)

    def _observer(self, index: int, pacer: Pacer) -> Callable[[Mapping[str, str]], None]:
        """What reads endpoint ``index``'s answers: its pacer, and with fallbacks the cool-downs too."""
        if len(self.endpoints) < 2:
            return pacer.observe

        def observe(headers: Mapping[str, str]) -> None:
            pacer.observe(headers)
            held = hold_from_headers(headers)
            if held is None:
                return
            kind, seconds = held
            until = hold_cool_down(self.cool_downs.clock(), seconds, self.failover)
            if until is not None:
                self.cool_downs.cool(index, until)
                logger.info("%s cools down for %.1f s: it says 0 %s remain, over FAILOVER_AFTER_WAIT=%g",
                            self.endpoints[index].host, seconds, kind, self.failover.after_wait)
        return observe

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

    def record(self, exchange: Exchange) -> Dict[str, Any]:
        """Count, keep for the status page and log a finished exchange, as its answer is about to be sent;
        its usage record."""
        ended = time.time()
        usage = usage_record(exchange, ended, self.config.secrets)
        with self._lock:
            self.recent.add(usage, ended)
            self._counters["requests"] += 1
            self._counters["retries"] += exchange.retries
            self._counters["gave_up"] += exchange.outcome == GAVE_UP
            self._apis[exchange.client_protocol + "->" + exchange.upstream_protocol] += 1
            served = exchange.attempts[-1] if exchange.served_by else None
            for attempt in exchange.attempts:
                if attempt is not served and attempt.kind not in ("client_gone", "stopping"):
                    self._failed[attempt.endpoint] += 1
            if served is not None:
                self._served[served.endpoint] += 1
            self._stats.add(usage)
        logger.info(SUMMARY, *summary(exchange))
        refused = credentials_warning(exchange, self.config)
        if refused:
            logger.warning("%s", refused)
        return usage

    def log_usage(self, usage: Dict[str, Any]) -> None:
        """Append a usage record to USAGE_LOG, if set, once its answer has been sent (or the client left)."""
        if self.usage_log is not None:
            self.usage_log.write(dict(usage, time=iso_time(time.time())))

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
            served, failed = list(self._served), list(self._failed)
        cooling = self.cool_downs.remaining()  # rounded up: an endpoint still cooling down never shows 0
        endpoints = [{"name": endpoint.short_name, "host": endpoint.host, "served": served[index],
                      "failed": failed[index], "cooling_down_s": math.ceil(cooling[index] * 10) / 10}
                     for index, endpoint in enumerate(self.endpoints)]
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
            "endpoints": endpoints,
            "queued": self.pacers.queued,  # of those, waiting for their turn to send (pacing)
        }

    def stats(self) -> Dict[str, Any]:
        """The figures of --stats for the requests since start (GET /stats)."""
        with self._lock:
            figures = self._stats.figures()
        return dict({"since": iso_time(self.started_at), "uptime_s": round(time.monotonic() - self.started, 1)},
                    **figures)

    def status_page(self) -> Reply:
        """The status page now; keys masked again in case a client sent one as a model name."""
        now = time.time()
        health = self.health()
        with self._lock:
            records = self.recent.records()
            minutes = self.recent.per_minute(now)
            figures = self._stats.figures()
        return page_reply(mask_secrets(render(health, records, minutes, now, figures=figures), self.config.secrets))

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
        """Stop listening; requests in flight may still log their usage until ``close_usage_log``."""
        super().server_close()
        self.upstream.close()

    def close_usage_log(self) -> None:
        if self.usage_log is not None:
            self.usage_log.close()

    def stop_now(self) -> None:
        """End the grace of ``drain`` (running or to come): requests in flight are answered at once."""
        self.stopping.set()
        self.hurry.set()
        self.pacers.wake_all()

    def drain(self, grace: float) -> None:
        """Let requests in flight finish within ``grace`` seconds (less after ``stop_now``), then cut
        their upstream reads short.

        Backoff waits end at once; a request still reading after ``grace`` has its upstream
        socket shut. Either way the client gets a clean 503 ``proxy_stopping`` instead of a
        dropped connection.
        """
        self.stopping.set()
        self.pacers.wake_all()  # requests waiting for their turn end at once, as backoff waits do
        end = time.monotonic() + grace
        while self.active and time.monotonic() < end and not self.hurry.is_set():
            self.hurry.wait(0.05)
        self.upstream.cut()
        end = time.monotonic() + 1.0
        while self.active and time.monotonic() < end:
            time.sleep(0.05)
