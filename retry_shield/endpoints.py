"""Endpoints: the primary (AZURE_ENDPOINT) and the fallbacks (FALLBACK_n_*), as read from the settings."""

import re
import urllib.parse
from typing import Any, Callable, Dict, Iterable, List, Mapping, NamedTuple, Tuple

from .checks import misspelled
from .errors import ConfigError

PRIMARY_SETTINGS = {"ENDPOINT": "AZURE_ENDPOINT", "API_KEY": "AZURE_API_KEY", "MODEL": "FORCED_MODEL",
                    "UPSTREAM_API": "UPSTREAM_API", "RPM_LIMIT": "RPM_LIMIT"}
# A primary's setting named in a message (not inside a longer name such as FALLBACK_1_UPSTREAM_API).
PRIMARY_NAMED = re.compile(r"\b(%s)\b" % "|".join(sorted(PRIMARY_SETTINGS.values(), key=len, reverse=True)))
SUFFIX_OF = {name: suffix for suffix, name in PRIMARY_SETTINGS.items()}


class Endpoint(NamedTuple):
    """One upstream the proxy may send to: number 0 is the primary (AZURE_ENDPOINT), n is FALLBACK_n.

    ``model`` replaces the request's model when set (FALLBACK_n_MODEL, else FORCED_MODEL).
    A pacer or a counter is keyed by ``number``.
    """

    number: int
    url: str
    api_key: str = ""
    model: str = ""
    upstream_api: str = "auto"
    rpm_limit: int = 0  # requests per minute sent there (RPM_LIMIT, FALLBACK_n_RPM_LIMIT); 0: no limit

    @property
    def host(self) -> str:
        """The host as logs and /health show it: ``name`` or ``name:port``; never a key or a path."""
        parts = urllib.parse.urlsplit(self.url)
        name = parts.hostname or ""
        if ":" in name:
            name = "[%s]" % name
        return "%s:%d" % (name, parts.port) if parts.port else name

    @property
    def short_name(self) -> str:
        """How /health names it: primary, or FALLBACK_n (two endpoints may share a host)."""
        return "primary" if self.number == 0 else "FALLBACK_%d" % self.number

    @property
    def name(self) -> str:
        """How logs name it: the primary, or FALLBACK_n."""
        return "the primary" if self.number == 0 else "FALLBACK_%d" % self.number

    def setting(self, suffix: str) -> str:
        """The name of its setting ``suffix`` (ENDPOINT, API_KEY, MODEL, ...): FALLBACK_n_API_KEY
        for a fallback, the primary's own (AZURE_API_KEY, FORCED_MODEL, UPSTREAM_API) for the primary."""
        if self.number:
            return "FALLBACK_%d_%s" % (self.number, suffix)
        return PRIMARY_SETTINGS[suffix]

    def in_its_words(self, text: str) -> str:
        """``text`` naming this endpoint's settings where it names the primary's (FALLBACK_1_ENDPOINT for
        AZURE_ENDPOINT): the upstream module's messages are written for the primary."""
        return PRIMARY_NAMED.sub(lambda match: self.setting(SUFFIX_OF[match.group(1)]), text)


# A fallback endpoint's settings: FALLBACK_1_ENDPOINT, FALLBACK_2_API_KEY, ...
FALLBACK_KEY = re.compile(r"FALLBACK_(\d+)_([A-Z_]+)\Z")
# The settings of fallback n, FALLBACK_n_<suffix>: (suffix, Endpoint field, help). Each is parsed as the
# primary's setting of that suffix (PRIMARY_SETTINGS) is.
FALLBACK_SETTINGS = (
    ("ENDPOINT", "url", "fallback n's URL, as AZURE_ENDPOINT; tried after the primary, in order"),
    ("API_KEY", "api_key", "its key, as AZURE_API_KEY; empty passes the client's own"),
    ("MODEL", "model", "the model sent there (wins over FORCED_MODEL)"),
    ("UPSTREAM_API", "upstream_api", "the API it speaks, as UPSTREAM_API"),
    ("RPM_LIMIT", "rpm_limit", "requests per minute sent there, as RPM_LIMIT; 0: no limit"),
)
FALLBACK_SUFFIXES = tuple(suffix for suffix, _, _ in FALLBACK_SETTINGS)
# Parses one setting's value: (suffix, the setting's name, its text) -> the value; ConfigError when malformed.
ParseAs = Callable[[str, str, str], Any]


def fallback_help() -> List[Tuple[str, str, Any]]:
    """(FALLBACK_n_<suffix>, help, default) for --help; "" where there is no default."""
    return [("FALLBACK_n_" + suffix, text, Endpoint._field_defaults.get(field, ""))
            for suffix, field, text in FALLBACK_SETTINGS]


def fallback_names(keys: Iterable[str]) -> List[str]:
    """The fallback settings of each number that ``keys`` use (and of the next one, and of 1), so that
    FALLBACK_1_ENDPONT is taken for a misspelling and FALLBACK_1_MODEL is not."""
    numbers = {int(match.group(1)) for match in map(FALLBACK_KEY.match, keys) if match}
    numbers |= {1, max(numbers, default=0) + 1}
    return ["FALLBACK_%d_%s" % (number, suffix) for number in sorted(numbers) for suffix in FALLBACK_SUFFIXES]


def read_fallbacks(environ: Mapping[str, str], file_keys: Iterable[str], parse_as: ParseAs) -> Tuple[Endpoint, ...]:
    """FALLBACK_n_* as endpoints 1, 2, ...; an empty value is unset. A setting that is not a fallback's,
    a number out of order, or a fallback setting without its FALLBACK_n_ENDPOINT is a ConfigError."""
    given: Dict[int, Dict[str, Tuple[str, str]]] = {}
    for key in sorted(set(environ) | set(file_keys)):
        match = FALLBACK_KEY.match(key)
        value = environ.get(key, "").strip()
        if match is None or not value:
            continue
        number, suffix = match.groups()
        if suffix not in FALLBACK_SUFFIXES:
            raise ConfigError("%s is not a setting; %s" % (key, _meant(number, suffix)))
        if number.startswith("0"):
            raise ConfigError("%s: fallbacks are numbered from 1 (FALLBACK_1_ENDPOINT, FALLBACK_2_ENDPOINT, ...); "
                              "rename it" % key)
        given.setdefault(int(number), {})[suffix] = (key, value)
    for number, settings in sorted(given.items()):
        if "ENDPOINT" not in settings:
            key = min(name for name, _ in settings.values())
            raise ConfigError("%s is set but FALLBACK_%d_ENDPOINT is not; set FALLBACK_%d_ENDPOINT to that "
                              "fallback's URL, or remove %s" % (key, number, number, key))
    fallbacks = []
    for expected, number in enumerate(sorted(given), 1):
        if number != expected:
            raise ConfigError("FALLBACK_%d_ENDPOINT is set but FALLBACK_%d_ENDPOINT is not; number the fallbacks "
                              "1, 2, 3, ... without a gap" % (number, expected))
        fields = {field: parse_as(suffix, *given[number][suffix])
                  for suffix, field, _ in FALLBACK_SETTINGS if suffix in given[number]}
        fallbacks.append(Endpoint(number=number, **fields))
    return tuple(fallbacks)


def _meant(number: str, suffix: str) -> str:
    """The fix for FALLBACK_<number>_<suffix>, a suffix no fallback setting has."""
    near = misspelled([suffix], FALLBACK_SUFFIXES)
    if near:
        return "did you mean FALLBACK_%s_%s?" % (number, near[0][1])
    first, *others = FALLBACK_SUFFIXES
    return "a fallback has FALLBACK_%s_%s, %s and _%s" % (number, first, ", ".join("_" + suffix for suffix in
                                                                                   others[:-1]), others[-1])
