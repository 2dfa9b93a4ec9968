"""Settings: the table of every setting, their parsers, the command line, load_config and its warnings."""

import argparse
import math
import os
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple

from . import __version__
from .checks import azure_path_warning, misspelled, placeholder_in
from .errors import ConfigError
from .endpoints import PRIMARY_SETTINGS, Endpoint, fallback_help, fallback_names, read_fallbacks
from .routes import OPERATION_NAMES, SHORT_KEY, is_loopback_host, operation_url_protocol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_ENV_FILE = os.path.join(ROOT, ".env")
# The settings that have a command-line flag of their own.
FLAGS = {"HOST": "--host", "PORT": "--port"}


class EnvFile(NamedTuple):
    """What was found of the settings file: its path, whether it is there, and the keys python-dotenv read."""

    path: str
    found: bool
    keys: Optional[Tuple[str, ...]]  # None: python-dotenv is not installed, so the file was not read
    given: bool = False  # named by --env-file, not the default beside proxy.py

    @property
    def label(self) -> str:
        return self.path if self.given else ".env"


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
    usage_log: str = ""
    rpm_limit: int = 0
    env_file: str = DEFAULT_ENV_FILE
    env_keys: Tuple[str, ...] = ()  # the keys read from env_file
    from_flags: Tuple[str, ...] = ()  # the settings given as flags (HOST, PORT)
    fallbacks: Tuple[Endpoint, ...] = ()  # FALLBACK_1_*, FALLBACK_2_*, ... in order; model: FALLBACK_n_MODEL only
    failover_after_wait: float = 20.0
    failover_after_failures: int = 3

    @property
    def max_attempts(self) -> int:
        return self.max_retries + 1

    @property
    def endpoints(self) -> Tuple[Endpoint, ...]:
        """The primary, then the fallbacks, each with the model it is sent (FALLBACK_n_MODEL over FORCED_MODEL)."""
        primary = Endpoint(0, self.endpoint, self.api_key, self.forced_model, self.upstream_api, self.rpm_limit)
        return (primary,) + tuple(fallback._replace(model=fallback.model or self.forced_model)
                                  for fallback in self.fallbacks)

    @property
    def secrets(self) -> Tuple[str, ...]:
        """The keys that must never be written anywhere."""
        keys = (self.api_key, self.proxy_api_key) + tuple(fallback.api_key for fallback in self.fallbacks)
        return tuple(key for key in keys if key)

    def named(self, env: str) -> str:
        """How the user gave setting ``env``: its flag (``--port``) or its name (``PORT``)."""
        return FLAGS[env] if env in self.from_flags else env


class Setting(NamedTuple):
    env: str
    field: str
    parse: Callable[[str, str], Any]
    help: str


def _given(name: str, value: Any, quote: bool = True) -> str:
    """``PORT='abc'`` for a setting, ``--port 'abc'`` for a flag (without quotes: ``HOST=::``, ``--host ::``)."""
    return "%s%s%s" % (name, " " if name.startswith("--") else "=", repr(value) if quote else value)


def _parse_endpoint(name: str, value: str) -> str:
    placeholder = placeholder_in(value)
    if placeholder is not None:
        raise ConfigError("%s still holds the placeholder %r; put your own endpoint there: your Azure resource's "
                          "endpoint as the Azure portal shows it, followed by /openai/v1, or your provider's base URL "
                          "(https://api.openai.com/v1)" % (name, placeholder))
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
        raise ConfigError("%s is not a port; use a whole number from 1 to 65535 (0 picks a free one)"
                          % _given(name, value))
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
    if api not in ("auto", "chat", "responses"):
        raise ConfigError("%s=%r is not an API; use auto (the URL decides), chat (the upstream speaks only "
                          "Chat Completions) or responses (it speaks only the Responses API)" % (name, value))
    return api


def _parse_path(name: str, value: str) -> str:
    return os.path.expanduser(value)


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
            "auto (a full operation URL decides, else the client's own API), chat (the upstream speaks only "
            "Chat Completions: Responses requests are translated) or responses (the reverse)"),
    Setting("FAILOVER_AFTER_WAIT", "failover_after_wait", _number_parser(float, 0.0),
            "with fallbacks: an endpoint asking for a longer wait (seconds) is left for the next one"),
    Setting("FAILOVER_AFTER_FAILURES", "failover_after_failures", _number_parser(int, 1),
            "with fallbacks: after this many retryable failures in a row an endpoint is left for the next one"),
    Setting("USAGE_LOG", "usage_log", _parse_path,
            "file to append one JSON line to per request (what the shield did; --stats reads it); empty: none"),
    Setting("RPM_LIMIT", "rpm_limit", _number_parser(int, 0),
            "requests per minute sent to AZURE_ENDPOINT, evenly paced (a bucket of one second's worth); more wait "
            "in the proxy in arrival order; 0: no limit (set it a little below the real quota)"),
)

SETTING_OF = {setting.env: setting for setting in SETTINGS}


def _settings_help() -> str:
    defaults = Config(endpoint="")
    lines = ["settings (environment or .env; an empty value means the default):"]
    for setting in SETTINGS:
        default = getattr(defaults, setting.field)
        shown = "" if default in ("", ()) else " [default: %s]" % (default,)
        lines.append("  %-24s %s%s" % (setting.env, setting.help, shown))
    lines.append("fallback endpoints (n = 1, 2, ... without a gap; see README, Several endpoints):")
    for name, text, default in fallback_help():
        lines.append("  %-24s %s%s" % (name, text, "" if default == "" else " [default: %s]" % (default,)))
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
    parser.add_argument("--check", action="store_true",
                        help="start nothing: send one small streamed request to each endpoint with these settings, "
                             "say what came back and what to fix, and exit (0: it works, 1: it does not)")
    parser.add_argument("--stats", nargs="?", const="", metavar="FILE",
                        help="print a summary of the usage log FILE (default: USAGE_LOG) and exit")
    parser.add_argument("--since", metavar="AGE", help="with --stats: only the requests of the last AGE "
                        "(90s, 30m, 24h, 7d)")
    parser.add_argument("--version", action="version", version="%(prog)s " + __version__)
    return parser


def load_config(argv: List[str], environ: Mapping[str, str], env_file: Optional[EnvFile] = None) -> Config:
    """Build the Config from command-line flags over ``environ``; raise ConfigError on bad input.

    ``env_file`` says what main found of the settings file (None: not looked for): its
    misspelled keys, its absence, or python-dotenv's, then explain a missing setting.
    """
    args = build_arg_parser().parse_args(argv)
    try:
        return _load(args, environ, env_file)
    except ConfigError as exc:
        if env_file is None or not env_file.found or env_file.keys is not None:
            raise
        # Whatever went wrong, the settings file that was not read may be why: say that first.
        raise ConfigError("python-dotenv is not installed, so .env (%s) was not read: pip install -r "
                          "requirements.txt; from the environment alone, %s"
                          % (env_file.path, str(exc).split(";")[0])) from None


def _load(args: argparse.Namespace, environ: Mapping[str, str], env_file: Optional[EnvFile]) -> Config:
    values: Dict[str, Any] = {}
    flags = {"HOST": args.host, "PORT": args.port}
    for setting in SETTINGS:
        name, raw = FLAGS.get(setting.env, ""), flags.get(setting.env)
        if raw is None:
            name, raw = setting.env, environ.get(setting.env, "")
        raw = raw.strip()
        if raw:
            values[setting.field] = setting.parse(name, raw)
    fields = {setting.env: setting.field for setting in SETTINGS}
    file_keys = (env_file.keys or ()) if env_file is not None else ()
    for key, meant in misspelled(file_keys, known_names(file_keys)):
        is_set = fields[meant] in values if meant in fields else bool(environ.get(meant, "").strip())
        if not is_set:
            raise ConfigError("%s in %s is not a setting; did you mean %s?" % (key, env_file.label, meant))
    values["fallbacks"] = read_fallbacks(environ, file_keys, _parse_as)
    if "endpoint" not in values:
        if env_file is not None and not env_file.found:
            raise ConfigError("AZURE_ENDPOINT is not set, and there is no .env at %s; copy .env.example there and "
                              "set AZURE_ENDPOINT in it, or set AZURE_ENDPOINT in the environment" % env_file.path)
        raise ConfigError("AZURE_ENDPOINT is not set; put AZURE_ENDPOINT=https://NAME.openai.azure.com/openai/v1 "
                          "(NAME: your Azure resource) or your provider's base URL in .env (see .env.example) or "
                          "the environment")
    if args.debug:
        values["log_level"] = "DEBUG"
    if env_file is not None:
        values.update(env_file=env_file.path if env_file.given else DEFAULT_ENV_FILE, env_keys=file_keys)
    elif args.env_file:
        values["env_file"] = args.env_file
    config = Config(from_flags=tuple(env for env, flag in flags.items() if flag is not None), **values)
    if not is_loopback_host(config.host) and not config.proxy_api_key:
        host = config.named("HOST")
        raise ConfigError("%s is reachable from other machines, which could then spend your API key; set "
                          "PROXY_API_KEY to a secret clients must send, or use %s"
                          % (_given(host, config.host, quote=False), _given(host, "127.0.0.1", quote=False)))
    _check_api("AZURE_ENDPOINT", config.endpoint, "UPSTREAM_API", config.upstream_api)
    for fallback in config.fallbacks:
        _check_api(fallback.setting("ENDPOINT"), fallback.url, fallback.setting("UPSTREAM_API"), fallback.upstream_api)
    if config.retry_max_delay < config.retry_base_delay:
        raise ConfigError("RETRY_MAX_DELAY=%s is below RETRY_BASE_DELAY=%s; raise RETRY_MAX_DELAY"
                          % (config.retry_max_delay, config.retry_base_delay))
    return config


def _check_api(url_name: str, url: str, api_name: str, api: str) -> None:
    """A URL that names one API with the other API's setting is a contradiction: say which to change."""
    named = operation_url_protocol(url)
    if api != "auto" and named not in (None, api):
        raise ConfigError("%s is a %s URL but %s=%s; give the endpoint's base URL or its %s URL, or set %s=auto"
                          % (url_name, OPERATION_NAMES[named], api_name, api, OPERATION_NAMES[api], api_name))


def known_names(keys: Iterable[str]) -> List[str]:
    """Every setting's name, with the fallback settings of each number that ``keys`` use (and of the next one)."""
    return [setting.env for setting in SETTINGS] + fallback_names(keys)


def _parse_as(suffix: str, name: str, value: str) -> Any:
    """A fallback's setting, parsed as the primary's of that suffix is (FALLBACK_1_RPM_LIMIT as RPM_LIMIT)."""
    return SETTING_OF[PRIMARY_SETTINGS[suffix]].parse(name, value)


def config_warnings(config: Config) -> List[str]:
    """Settings that work but are most likely mistakes, each as one line for the log."""
    warnings = []
    keys = [("AZURE_API_KEY", config.api_key), ("PROXY_API_KEY", config.proxy_api_key)]
    keys += [(fallback.setting("API_KEY"), fallback.api_key) for fallback in config.fallbacks]
    for name, key in keys:
        if key and len(key) < SHORT_KEY:
            warnings.append("%s is only %d characters long; check that it is the real key (a key this short "
                            "is easy to guess)" % (name, len(key)))
    label = ".env" if config.env_file == DEFAULT_ENV_FILE else config.env_file
    for key, meant in misspelled(config.env_keys, known_names(config.env_keys)):
        # load_config refused the ones whose setting is missing: the setting is set, this key ignored
        warnings.append("%s in %s is not a setting; did you mean %s? (%s is set, so %s is ignored)"
                        % (key, label, meant, meant, key))
    for endpoint in config.endpoints:
        path_warning = azure_path_warning(endpoint.url, endpoint.setting("ENDPOINT"))
        if path_warning:
            warnings.append(path_warning)
    return warnings
