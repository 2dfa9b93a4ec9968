"""Upstream quirks: parameters a chat upstream refused, learned from its 400s, and requests sent without them."""

import logging
import re
import threading
from typing import Any, Dict, FrozenSet, Optional, Set, Union

logger = logging.getLogger(__name__)

# Parameters the proxy itself adds or translates that some chat servers refuse, and how a
# request is changed to do without each: dropped, or renamed to the known alternative.
RENAMED = {"max_tokens": "max_completion_tokens"}
KNOWN = ("stream_options", "strict", "developer", "max_tokens")
NAMED = re.compile(r"\b(%s)\b" % "|".join(KNOWN))


def refused_parameter(status: int, body: Union[bytes, memoryview], request: Dict[str, Any]) -> Optional[str]:
    """The known parameter a 400 names, if the request carries it; else None.

    Servers say it in their own words: "Unrecognized request argument supplied: stream_options",
    "Unsupported parameter: 'max_tokens' is not supported with this model. Use
    'max_completion_tokens' instead.", "developer is not one of ['system', 'assistant', ...]".
    """
    if status != 400:
        return None
    text = bytes(body[:4000]).decode("utf-8", "replace")
    for match in NAMED.finditer(text):
        name = match.group(1)
        if _carries(request, name):
            return name
    return None


def _carries(request: Dict[str, Any], name: str) -> bool:
    if name == "developer":
        return any(isinstance(message, dict) and message.get("role") == "developer"
                   for message in request.get("messages") or ())
    if name == "strict":
        return any(isinstance(tool, dict) and "strict" in (tool.get("function") or {})
                   for tool in request.get("tools") or ())
    return name in request


def without(request: Dict[str, Any], refused: FrozenSet[str]) -> Dict[str, Any]:
    """``request`` changed to do without each refused parameter (a new dict; the input is kept)."""
    request = dict(request)
    for name in sorted(refused):
        if name == "developer":
            request["messages"] = [dict(message, role="system") if isinstance(message, dict)
                                   and message.get("role") == "developer" else message
                                   for message in request.get("messages") or ()]
        elif name == "strict":
            request["tools"] = [_without_strict(tool) for tool in request.get("tools") or ()]
        elif name in request:
            value = request.pop(name)
            if name in RENAMED:
                request[RENAMED[name]] = value
    return request


def _without_strict(tool: Any) -> Any:
    if not isinstance(tool, dict) or "strict" not in (tool.get("function") or {}):
        return tool
    function = {key: value for key, value in tool["function"].items() if key != "strict"}
    return dict(tool, function=function)


class Quirks:
    """What each upstream URL refused while this process lives: learned once, logged once."""

    def __init__(self) -> None:
        self._refused: Dict[str, Set[str]] = {}
        self._lock = threading.Lock()

    def of(self, url: str) -> FrozenSet[str]:
        with self._lock:
            return frozenset(self._refused.get(url, ()))

    def learn(self, url: str, name: str) -> bool:
        """Remember that ``url`` refuses ``name``; True the first time."""
        with self._lock:
            refused = self._refused.setdefault(url, set())
            if name in refused:
                return False
            refused.add(name)
        return True
