"""Settings: the table of every setting, their parsers, the command line, and load_config."""

import argparse
import math
import os
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Tuple

from . import __version__
from .errors import ConfigError
from .routes import SHORT_KEY, is_loopback_host

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_ENV_FILE = os.path.join(ROOT, ".env")


@dataclass(frozen=True)
class Config:
    """Every setting of one proxy run, validated."""

    endpoint: str
    api_key: str = ""
    host: str = "127.0.0.1"
    port: int = 8888
    forced_model: str = ""
    max_retries: int = 8
    retry_base_delay: float = 1.0
    retry_max_delay: float = 30.0
    total_timeout: float = 600.0
    connect_timeout: float = 10.0
    upstream_timeout: float = 120.0
    max_request_bytes: int = 16 * 1024 * 1024
    max_response_bytes: int = 256 * 1024 * 1024
    log_level: str = "INFO"
    proxy_api_key: str = ""
    allowed_origins: Tuple[str, ...] = ()
    client_timeout: float = 60.0
    upstream_api: str = "auto"
    env_file: str = DEFAULT_ENV_FILE

    @property
    def max_attempts(self) -> int:
        return self.max_retries + 1

    @property
    def secrets(self) -> Tuple[str, ...]:
        """The keys that must never be written anywhere."""
        return tuple(key for key in (self.api_key, self.proxy_api_key) if key)


class Setting(NamedTuple):
    env: str
    field: str
    parse: Callable[[str, str], Any]
    help: str


def _parse_endpoint(name: str, value: str) -> str:
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in value:
        raise ConfigError(
            "%s=%r is not an http(s) URL; set it to your API base URL, e.g. "
            "https://NAME.openai.azure.com/openai/v1" % (name, value))
    try:
        parts.port
    except ValueError:
        raise ConfigError("%s=%r has an invalid port; fix the URL" % (name, value)) from None
    return value


def _parse_text(name: str, value: str) -> str:
    return value


def _parse_port(name: str, value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigError("%s=%r is not a port; use a whole number from 1 to 65535 (0 picks a free one)"
                          % (name, value))
    return port


def _number_parser(kind: type, minimum: float, strict: bool = False) -> Callable[[str, str], Any]:
    def parse(name: str, value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            number = None
        if number is None or not math.isfinite(number) or number < minimum or (strict and number == minimum):
            raise ConfigError("%s=%r is not valid; use a %s %s %s" % (
                name, value, "whole number" if kind is int else "number",
                "above" if strict else "of at least", minimum))
        return number
    return parse


def _parse_origins(name: str, value: str) -> Tuple[str, ...]:
    origins = tuple(origin.strip().rstrip("/") for origin in value.split(",") if origin.strip())
    for origin in origins:
        parts = urllib.parse.urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path:
            raise ConfigError("%s has %r, which is not an origin; list origins like http://localhost:3000, "
                              "separated by commas" % (name, origin))
    return origins


def _parse_upstream_api(name: str, value: str) -> str:
    api = value.lower()
    if api == "responses":
        raise ConfigError("%s=responses (Chat Completions clients on a Responses-only upstream) is not available "
                          "yet; use auto or chat" % name)
    if api not in ("auto", "chat"):
        raise ConfigError("%s=%r is not an API; use auto (the URL decides) or chat (the upstream speaks only "
                          "Chat Completions)" % (name, value))
    return api


def _parse_log_level(name: str, value: str) -> str:
    level = value.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("%s=%r is not a log level; use DEBUG, INFO, WARNING or ERROR" % (name, value))
    return level


SETTINGS = (
    Setting("AZURE_ENDPOINT", "endpoint", _parse_endpoint,
            "upstream base URL (…/v1) or full operation URL (…/chat/completions?api-version=…); required"),
    Setting("AZURE_API_KEY", "api_key", _parse_text,
            "key sent upstream as api-key and Authorization: Bearer; empty passes the client's own"),
    Setting("HOST", "host", _parse_text, "address to listen on"),
    Setting("PORT", "port", _parse_port, "port to listen on (0 picks a free one)"),
    Setting("FORCED_MODEL", "forced_model", _parse_text, "replaces the request's model when set"),
    Setting("MAX_RETRIES", "max_retries", _number_parser(int, 0), "retries after the first attempt"),
    Setting("RETRY_BASE_DELAY", "retry_base_delay", _number_parser(float, 0.0),
            "first backoff wait in seconds, doubled each retry"),
    Setting("RETRY_MAX_DELAY", "retry_max_delay", _number_parser(float, 0.0),
            "longest backoff wait in seconds (an upstream Retry-After may ask for more)"),
    Setting("TOTAL_TIMEOUT", "total_timeout", _number_parser(float, 0.0, strict=True),
            "seconds one request may take, all attempts and waits included"),
    Setting("CONNECT_TIMEOUT", "connect_timeout", _number_parser(float, 0.0, strict=True),
            "seconds to connect to the upstream"),
    Setting("UPSTREAM_TIMEOUT", "upstream_timeout", _number_parser(float, 0.0, strict=True),
            "seconds of upstream silence before an attempt counts as stalled"),
    Setting("MAX_REQUEST_BYTES", "max_request_bytes", _number_parser(int, 1), "largest request body accepted"),
    Setting("MAX_RESPONSE_BYTES", "max_response_bytes", _number_parser(int, 1),
            "largest upstream answer buffered in memory"),
    Setting("LOG_LEVEL", "log_level", _parse_log_level, "DEBUG, INFO, WARNING or ERROR"),
    Setting("PROXY_API_KEY", "proxy_api_key", _parse_text,
            "key clients must send (Bearer or api-key); required when HOST is not loopback"),
    Setting("ALLOWED_ORIGINS", "allowed_origins", _parse_origins,
            "comma-separated browser origins allowed to call the proxy (CORS); others get 403"),
    Setting("CLIENT_TIMEOUT", "client_timeout", _number_parser(float, 0.0, strict=True),
            "seconds a client may take to send its request; idle connections close after it"),
    Setting("UPSTREAM_API", "upstream_api", _parse_upstream_api,
            "auto (a full operation URL decides, else the client's own API) or chat (the upstream speaks "
            "only Chat Completions: Responses requests are translated)"),
)


def _settings_help() -> str:
    defaults = Config(endpoint="")
    lines = ["settings (environment or .env; an empty value means the default):"]
    for setting in SETTINGS:
        default = getattr(defaults, setting.field)
        shown = "" if default in ("", ()) else " [default: %s]" % (default,)
        lines.append("  %-18s %s%s" % (setting.env, setting.help, shown))
    return "\n".join(lines)


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="proxy.py",
        description="Buffering retry-shield proxy for OpenAI-compatible APIs (Responses and Chat Completions).",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", help="address to listen on (overrides HOST)")
    parser.add_argument("--port", help="port to listen on (overrides PORT)")
    parser.add_argument("--env-file", metavar="PATH", help="read settings from PATH instead of .env beside proxy.py")
    parser.add_argument("--debug", action="store_true", help="log every attempt in detail (LOG_LEVEL=DEBUG)")
    parser.add_argument("--version", action="version", version="%(prog)s " + __version__)
    return parser


def load_config(argv: List[str], environ: Mapping[str, str]) -> Config:
    """Build the Config from command-line flags over ``environ``; raise ConfigError on bad input."""
    args = build_arg_parser().parse_args(argv)
    values: Dict[str, Any] = {}
    flags = {"HOST": args.host, "PORT": args.port}
    for setting in SETTINGS:
        raw = flags.get(setting.env)
        if raw is None:
            raw = environ.get(setting.env, "")
        raw = raw.strip()
        if raw:
            values[setting.field] = setting.parse(setting.env, raw)
    if "endpoint" not in values:
        raise ConfigError("AZURE_ENDPOINT is not set; put AZURE_ENDPOINT=https://NAME.openai.azure.com/openai/v1 "
                          "in .env (see .env.example) or the environment")
    if args.debug:
        values["log_level"] = "DEBUG"
    if args.env_file:
        values["env_file"] = args.env_file
    config = Config(**values)
    if not is_loopback_host(config.host) and not config.proxy_api_key:
        raise ConfigError("HOST=%s is reachable from other machines, which could then spend your API key; "
                          "set PROXY_API_KEY to a secret clients must send, or use HOST=127.0.0.1" % config.host)
    if config.upstream_api == "chat" and urllib.parse.urlsplit(config.endpoint).path.rstrip("/").endswith("/responses"):
        raise ConfigError("AZURE_ENDPOINT ends in /responses but UPSTREAM_API=chat; give the endpoint's "
                          "/chat/completions URL or its base URL, or set UPSTREAM_API=auto")
    if config.retry_max_delay < config.retry_base_delay:
        raise ConfigError("RETRY_MAX_DELAY=%s is below RETRY_BASE_DELAY=%s; raise RETRY_MAX_DELAY"
                          % (config.retry_max_delay, config.retry_base_delay))
    return config


def config_warnings(config: Config) -> List[str]:
    """Settings that work but are most likely mistakes, each as one line for the log."""
    warnings = []
    for name, key in (("AZURE_API_KEY", config.api_key), ("PROXY_API_KEY", config.proxy_api_key)):
        if key and len(key) < SHORT_KEY:
            warnings.append("%s is only %d characters long; check that it is the real key (a key this short "
                            "is easy to guess)" % (name, len(key)))
    return warnings
