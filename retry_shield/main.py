"""Start and stop: .env loading, logging with keys masked, the banner, signals, and ``main``."""

import errno
import logging
import os
import signal
import sys
import threading
from typing import List, Optional, Tuple

from . import __version__
from .config import DEFAULT_ENV_FILE, Config, EnvFile, build_arg_parser, config_warnings, load_config
from .errors import ConfigError
from .routes import is_loopback_host, mask_secrets, operation_url_protocol, redact_url
from .server import ShieldServer

logger = logging.getLogger(__name__)

# Seconds a stopping server gives requests in flight before it cuts them short.
SHUTDOWN_GRACE = 5.0


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


def _banner(config: Config, server: ShieldServer) -> None:
    host, port = server.server_address[:2]
    logger.info("retry-shield %s listening on http://%s:%d/v1", __version__, host, port)
    logger.info("upstream: %s%s", redact_url(config.endpoint), " (key set)" if config.api_key else
                " (client credentials passed through)")
    logger.info("upstream API: %s", _api_line(config))
    if config.forced_model:
        logger.info("forced model: %s", config.forced_model)
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
        config = load_config(argv, os.environ, env_file)
    except ConfigError as exc:
        sys.stderr.write("proxy.py: error: %s\n" % exc)
        return 2
    _configure_logging(config)
    warning = env_file_warning(env_file)
    for message in ([warning] if warning else []) + config_warnings(config):
        logger.warning("%s", message)
    try:
        server = _listen(config)
    except ConfigError as exc:
        sys.stderr.write("proxy.py: error: %s\n" % exc)
        return 2

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    _banner(config, server)
    try:
        server.serve_forever()
    finally:
        server.server_close()  # refuse new connections while the ones in flight finish
        server.drain(grace=SHUTDOWN_GRACE)
        logger.info("stopped")
    return 0
