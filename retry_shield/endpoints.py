"""An endpoint: the primary (AZURE_ENDPOINT) or a fallback (FALLBACK_n_*), with its URL, key, model and protocol."""

import re
import urllib.parse
from typing import NamedTuple

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
