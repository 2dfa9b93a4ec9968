"""Start and stop: .env loading, logging with keys masked, the banner, signals, and ``main``."""

import errno
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import List, Mapping, Optional, Tuple

from . import __version__
from .check import run_check
from .config import DEFAULT_ENV_FILE, Config, EnvFile, build_arg_parser, config_warnings, load_config
from .errors import ConfigError
from .routes import is_loopback_host, mask_secrets, operation_url_protocol, redact_url
from .server import ShieldServer
from .stats import parse_since, read_log, render
from .usage import iso_time

logger = logging.getLogger(__name__)

# Seconds a stopping server gives requests in flight before it cuts them short.
SHUTDOWN_GRACE = 5.0
# The signals that stop the proxy: the first with SHUTDOWN_GRACE, a second one at once.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class SecretFilter(logging.Filter):
    """Masks the configured keys in every log record, whatever code wrote it."""

    def __init__(self, secrets: Tuple[str, ...]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_secrets(message, self.secrets)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def load_env_file(argv: List[str]) -> EnvFile:
    """Load .env (or --env-file) into os.environ without overriding it; say what was found.

    Its keys are read by python-dotenv too (``dotenv_values``), so that load_config can
    name the misspelled ones; without python-dotenv nothing is read (``keys`` None).
    """
    args, _ = build_arg_parser().parse_known_args(argv)
    path = args.env_file or DEFAULT_ENV_FILE
    if args.env_file and not os.path.exists(path):
        raise ConfigError("--env-file %s does not exist; give the path of your .env file" % path)
    found = os.path.exists(path)
    try:
        from dotenv import dotenv_values, load_dotenv
    except ImportError:
        return EnvFile(path, found, None, bool(args.env_file))
    keys: Tuple[str, ...] = ()
    if os.path.isfile(path):
        load_dotenv(path, override=False)
        keys = tuple(dotenv_values(path, interpolate=False))
    return EnvFile(path, found, keys, bool(args.env_file))


def env_file_warning(env_file: EnvFile) -> Optional[str]:
    """The warning when python-dotenv is missing, so the settings file is not read."""
    if env_file.keys is not None:
        return None
    return ("python-dotenv is not installed, so %s is not read; settings come from the environment "
            "only (install it: pip install -r requirements.txt)" % env_file.path)


def stopping_message(grace: float, active: int) -> str:
    """The line logged at once when the first stop signal arrives."""
    if not active:
        return "stopping"
    return "stopping; waiting up to %g s for %d request%s (Ctrl-C again to stop at once)" % (
        grace, active, "" if active == 1 else "s")


def exit_code(signum: Optional[int]) -> int:
    """The exit code after the first stop signal: 130 after Ctrl-C (SIGINT), as shells expect of a
    program the user interrupted; 0 after SIGTERM, a requested stop that service managers count as clean."""
    return 128 + signum if signum == signal.SIGINT else 0


def _ignore(signum: int, frame: object) -> None:
    """A Python-level handler must be set for Python to write the signal to the wakeup socket."""


class StopSignals:
    """SIGINT and SIGTERM as they arrive, read in a thread: ``next()`` blocks until one comes.

    No code of ours runs inside the signal handler: it interrupts the main thread anywhere,
    even while that holds a lock (starting a thread or setting an Event there can deadlock).
    Python's own C-level handler writes each signal's number to a socket instead
    (``signal.set_wakeup_fd``). A SIGINT ignored when the proxy started stays ignored, as a
    background job's should: Ctrl-C in the terminal is for the foreground program (chatgpt.sh
    starts the proxy so, and stops it with SIGTERM).
    """

    def __init__(self) -> None:
        self._reader, writer = socket.socketpair()
        writer.setblocking(False)
        self._writer = writer  # kept open for as long as Python may write to it
        self.handled = frozenset(signum for signum in STOP_SIGNALS
                                 if signum != signal.SIGINT or signal.getsignal(signum) is not signal.SIG_IGN)
        signal.set_wakeup_fd(writer.fileno())
        for signum in self.handled:
            signal.signal(signum, _ignore)

    def next(self) -> int:
        while True:
            data = self._reader.recv(1)
            if data and data[0] in self.handled:
                return data[0]


def _watch_signals(signals: StopSignals, server: ShieldServer, received: List[int]) -> None:
    """The first signal: say what the stop waits for, stop accepting; the second: stop at once."""
    received.append(signals.next())
    logger.info("%s", stopping_message(SHUTDOWN_GRACE, server.active))
    server.stopping.set()  # no new attempt or backoff wait begins
    server.shutdown()  # serve_forever returns, and main() drains
    signals.next()
    active = server.active
    logger.warning("stopping now%s", "; answering %d request%s in flight with proxy_stopping" % (
        active, "" if active == 1 else "s") if active else "")
    server.stop_now()


def stats_command(path: Optional[str], since: Optional[str], environ: Mapping[str, str]) -> int:
    """``--stats [FILE] [--since AGE]``: print the summary of a usage log (FILE, else USAGE_LOG)."""
    if path is None:
        raise ConfigError("--since goes with --stats; run proxy.py --stats --since %s" % since)
    path = path or os.path.expanduser(environ.get("USAGE_LOG", "").strip())
    if not path:
        raise ConfigError("--stats needs a usage log; give its path (--stats FILE) or set USAGE_LOG")
    cutoff = None
    if since is not None:
        try:
            cutoff = iso_time(time.time() - parse_since(since))
        except ValueError:
            raise ConfigError("--since %r is not an age; give a number and a unit: 90s, 30m, 24h or 7d"
                              % since) from None
    try:
        with open(path, "rb") as lines:
            stats, skipped = read_log(lines, cutoff)
    except OSError as exc:
        raise ConfigError("cannot read the usage log %s: %s; give the path of a usage log (--stats FILE or "
                          "USAGE_LOG)" % (path, exc.strerror or exc)) from None
    source = path if since is None else "%s, the last %s" % (path, since)
    sys.stdout.write(render(stats.figures(), source, skipped))
    return 0


def _banner(config: Config, server: ShieldServer) -> None:
    host, port = server.server_address[:2]
    logger.info("retry-shield %s listening on http://%s:%d/v1", __version__, host, port)
    logger.info("upstream: %s%s", redact_url(config.endpoint), " (key set)" if config.api_key else
                " (client credentials passed through)")
    logger.info("upstream API: %s", _api_line(config))
    if config.forced_model:
        logger.info("forced model: %s", config.forced_model)
    if config.rpm_limit:
        logger.info("pacing: at most %d requests a minute to the upstream, evenly", config.rpm_limit)
    for fallback in config.endpoints[1:]:
        logger.info("fallback %d: %s%s, model %s, upstream API %s%s", fallback.number, redact_url(fallback.url),
                    " (key set)" if fallback.api_key else " (client credentials passed through)",
                    fallback.model or "as asked", fallback.upstream_api,
                    ", at most %d requests a minute" % fallback.rpm_limit if fallback.rpm_limit else "")
    if config.fallbacks:
        logger.info("failover: to the next endpoint when one asks to wait over %gs or fails %d times in a row",
                    config.failover_after_wait, config.failover_after_failures)
    if config.usage_log:
        logger.info("usage log: %s (python proxy.py --stats sums it up)", config.usage_log)
    if not is_loopback_host(host):
        logger.warning("listening on %s: other machines can reach this proxy; clients must send PROXY_API_KEY",
                       host)
    logger.info("retries: up to %d, backoff %gs doubling to %gs, %gs per request, %gs idle timeout",
                config.max_retries, config.retry_base_delay, config.retry_max_delay, config.total_timeout,
                config.upstream_timeout)


def _api_line(config: Config) -> str:
    named = operation_url_protocol(config.endpoint)
    if config.upstream_api == "chat" or named == "chat":
        return "%s: Chat Completions (responses->chat translated, chat->chat as is)" % config.upstream_api
    if config.upstream_api == "responses" or named == "responses":
        return "%s: the Responses API (chat->responses translated, responses->responses as is)" % config.upstream_api
    return "auto: each client's own (responses->responses, chat->chat)"


def _configure_logging(config: Config) -> None:
    logging.basicConfig(level=config.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    # The format shows none of these, and each costs time on every log line.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None  # the logging HOWTO's "Optimization": no stack walk to find the caller
    for handler in logging.getLogger().handlers:
        handler.addFilter(SecretFilter(config.secrets))


def _listen(config: Config) -> ShieldServer:
    """The server on HOST:PORT; a port in use or a bad address is a ConfigError."""
    try:
        return ShieldServer(config)
    except OSError as exc:
        port, host = config.named("PORT"), config.named("HOST")
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError("port %d on %s is already in use; stop the other program or %s" % (
                config.port, config.host, "give --port a free port" if port == "--port" else
                "set PORT to a free port")) from None
        raise ConfigError("cannot listen on %s:%d: %s; check %s and %s"
                          % (config.host, config.port, exc.strerror or exc, host, port)) from None


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        env_file = load_env_file(argv)
        args = build_arg_parser().parse_args(argv)
        if args.check and (args.stats is not None or args.since is not None):
            raise ConfigError("--check and --stats each run alone; run python proxy.py --check, then --stats")
        if args.stats is not None or args.since is not None:
            return stats_command(args.stats, args.since, os.environ)
        config = load_config(argv, os.environ, env_file)
    except ConfigError as exc:
        sys.stderr.write("proxy.py: error: %s\n" % exc)
        return 2
    _configure_logging(config)
    warning = env_file_warning(env_file)
    for message in ([warning] if warning else []) + config_warnings(config):
        logger.warning("%s", message)
    if args.check:
        try:
            return run_check(config, sys.stdout)
        except ConfigError as exc:  # USAGE_LOG cannot be opened: the same line and exit code as a start
            sys.stderr.write("proxy.py: error: %s\n" % exc)
            return 2
        except KeyboardInterrupt:  # no stop signals are handled without a server: Ctrl-C lands here
            sys.stderr.write("proxy.py: check interrupted\n")
            return exit_code(signal.SIGINT)
    try:
        server = _listen(config)
    except ConfigError as exc:
        sys.stderr.write("proxy.py: error: %s\n" % exc)
        return 2

    received: List[int] = []
    threading.Thread(target=_watch_signals, args=(StopSignals(), server, received), name="signals",
                     daemon=True).start()
    _banner(config, server)
    try:
        server.serve_forever()
    finally:
        server.server_close()  # refuse new connections while the ones in flight finish
        server.drain(grace=SHUTDOWN_GRACE)
        server.close_usage_log()  # after the drain: the requests it let finish have their lines
        logger.info("stopped")
    return exit_code(received[0] if received else None)
