"""Start-up checks for likely mistakes in the settings: placeholders, misspelled keys, an Azure host without a path."""

import difflib
import re
import urllib.parse
from typing import Iterable, List, Optional, Sequence, Tuple

from .routes import redact_url, upstream_url

# Text the examples write where the user's own name belongs: marked (<resource>, {name}), a word
# starting with "your-" (any case), one of the examples' words in capitals, or a row of x's.
MARKED = re.compile(r"<[^<>]*>|\{[^{}]*\}|[<>{}]")
YOUR_WORD = re.compile(r"your(?:[-_]|\Z)", re.IGNORECASE)
CAPITAL_WORD = re.compile(r"(?:NAME|(?:RESOURCE|DEPLOYMENT|MODEL)(?:[-_](?:NAME|ID))?)\Z")
X_WORD = re.compile(r"x{3,}\Z", re.IGNORECASE)
# The domains reserved for documentation (RFC 2606); .test and .invalid are left to tests.
EXAMPLE_DOMAINS = ("example.com", "example.net", "example.org", "example")
AZURE_HOSTS = (".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com")
# How alike (difflib's ratio) a key of .env must be to a setting's name to be taken for a misspelling of it:
# AZURE_ENDPONT, MAX_RETRES, LOGLEVEL, AZURE_OPENAI_API_KEY are; OPENAI_API_KEY, CLIENT_EXECUTABLE are not.
SIMILAR = 0.78
DEPLOYMENT_URL = "/openai/deployments/DEPLOYMENT/chat/completions?api-version=2024-10-21"


def placeholder_in(url: str) -> Optional[str]:
    """The placeholder that a URL copied from an example still holds, or None.

    A placeholder is text in ``<...>`` or ``{...}``; a host label or path segment that
    starts with ``your-`` or ``your_`` (any case), that is NAME, RESOURCE, DEPLOYMENT or
    MODEL in capitals (also with -NAME or -ID), or that is only x's (``xxxx``); or a
    documentation domain: example.com, example.net, example.org, the .example domain.
    """
    marked = MARKED.search(url)
    if marked:
        return marked.group(0)
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").rstrip(".")
    for domain in EXAMPLE_DOMAINS:
        if host == domain or host.endswith("." + domain):
            return domain
    netloc = parts.netloc.rpartition("@")[2]
    labels = [] if netloc.startswith("[") else netloc.split(":")[0].split(".")  # hostname is lower-cased
    for word in labels + urllib.parse.unquote(parts.path).split("/"):
        if YOUR_WORD.match(word) or CAPITAL_WORD.match(word) or X_WORD.match(word):
            return word
    return None


def misspelled(keys: Iterable[str], names: Sequence[str]) -> List[Tuple[str, str]]:
    """(key, setting) for each key that is not a setting's name but close to one (case aside)."""
    found = []
    for key in keys:
        if key in names:
            continue
        match = difflib.get_close_matches(key.upper(), names, n=1, cutoff=SIMILAR)
        if match:
            found.append((key, match[0]))
    return found


def azure_path_warning(endpoint: str, name: str = "AZURE_ENDPOINT") -> Optional[str]:
    """A warning for an Azure host given without its API path (``https://NAME.openai.azure.com``), or None."""
    parts = urllib.parse.urlsplit(endpoint)
    if not (parts.hostname or "").endswith(AZURE_HOSTS) or parts.path.strip("/") not in ("", "openai"):
        return None
    base = redact_url(endpoint).rstrip("/")
    host = redact_url(urllib.parse.urlunsplit((parts.scheme, parts.netloc, "", "", "")))
    return ("%s=%s ends before the API path, so requests would go to %s, which Azure does not serve; use "
            "%s/openai/v1 (the v1 API), or a deployment URL %s%s" % (
                name, base, redact_url(upstream_url(endpoint, "/responses")), host, host, DEPLOYMENT_URL))
