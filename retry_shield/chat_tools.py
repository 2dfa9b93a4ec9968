"""Responses tools as Chat Completions functions: custom tools with one string argument, namespaces flattened."""

import hashlib
import json
import logging
import re
from typing import AbstractSet, Any, Dict, FrozenSet, List, NamedTuple, Tuple

from .errors import ClientError

logger = logging.getLogger(__name__)

CUSTOM_INPUT = "input"  # the one argument that carries a custom (freeform) tool's text
NAME_BAD_CHARS = re.compile(r"[^a-zA-Z0-9_-]")  # chat names are ^[a-zA-Z0-9_-]{1,64}$
GRAMMAR_PREVIEW = 200


class ToolNames(NamedTuple):
    """The chat names of the request's tools, both ways."""

    custom: FrozenSet[str]
    namespaced: Dict[str, Tuple[str, str]]  # chat name -> (namespace, name)
    flat: Dict[Tuple[str, str], str]  # (namespace, name) -> chat name



def offered_tools(tools: Any, items: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The tools of `tools`, then those of `additional_tools` input items (where Codex puts them for some models)."""
    found = [tool for tool in tools or [] if isinstance(tool, dict)]
    for item in items:
        if item.get("type") == "additional_tools":
            found.extend(tool for tool in item.get("tools") or [] if isinstance(tool, dict))
    return found


def chat_tools(tools: List[Dict[str, Any]]) -> Tuple[List[Dict[str, Any]], ToolNames]:
    """Chat function tools: functions as they are, custom tools with one string argument, namespaces
    flattened (after every plain name is taken, so a flat name never hides one); built-in tools dropped."""
    taken = set(tool.get("name") for tool in tools if tool.get("type") in ("function", "custom"))
    out: List[Dict[str, Any]] = []
    custom: List[str] = []
    names = ToolNames(frozenset(), {}, {})
    dropped: List[str] = []
    for tool in tools:
        kind = tool.get("type")
        if kind == "namespace":
            members = [(tool.get("name") or "", one) for one in tool.get("tools") or [] if isinstance(one, dict)]
        else:
            members = [(None, tool)]
        for namespace, member in members:
            if member.get("type") not in ("function", "custom"):
                dropped.append(str(member.get("type")) + ("" if namespace is None else " in namespace %s" % namespace))
                continue
            name = str(member.get("name") or "")
            if namespace is not None:
                key = (namespace, name)
                name = names.flat.get(key) or unique(flat_name(namespace, name), taken)
                taken.add(name)
                names.flat[key] = name
                names.namespaced[name] = key
            if member["type"] == "custom":
                custom.append(name)
            out.append(custom_function(name, member) if member["type"] == "custom" else function_tool(name, member))
    if dropped:
        logger.debug("tools without a chat equivalent not sent: %s", ", ".join(dropped))
    return out, names._replace(custom=frozenset(custom))


def function_tool(name: str, tool: Dict[str, Any]) -> Dict[str, Any]:
    """A chat function tool; `strict` only when the client set it."""
    function: Dict[str, Any] = {"name": name}
    for key in ("description", "parameters", "strict"):
        if tool.get(key) is not None:
            function[key] = tool[key]
    return {"type": "function", "function": function}


def custom_function(name: str, tool: Dict[str, Any]) -> Dict[str, Any]:
    """A chat function standing for a freeform tool: its text travels as the one string argument `input`."""
    lines = [tool["description"]] if tool.get("description") else []
    fmt = tool.get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "grammar":
        definition = " ".join(str(fmt.get("definition") or "").split())
        lines.append("Freeform input; grammar (%s): %s" % (fmt.get("syntax"), definition[:GRAMMAR_PREVIEW]))
    function: Dict[str, Any] = {"name": name, "description": "\n".join(lines)} if lines else {"name": name}
    function["parameters"] = {
        "type": "object",
        "properties": {CUSTOM_INPUT: {"type": "string", "description": "The raw input text, not JSON-encoded."}},
        "required": [CUSTOM_INPUT],
        "additionalProperties": False,
    }
    return {"type": "function", "function": function}


def flat_name(namespace: str, name: str) -> str:
    """`<namespace>__<name>` as a valid chat name: other characters become `_`, and one too long keeps
    its start and ends with a hash of the whole."""
    joined = NAME_BAD_CHARS.sub("_", "%s__%s" % (namespace, name))
    if len(joined) <= 64:
        return joined
    digest = hashlib.sha1(("%s\0%s" % (namespace, name)).encode("utf-8")).hexdigest()[:8]
    return "%s_%s" % (joined[:55], digest)


def unique(name: str, taken: AbstractSet[Any]) -> str:
    """`name`, or `name_2`, `name_3`... (cut to fit 64 characters) when another tool has it."""
    candidate, number = name, 1
    while candidate in taken:
        number += 1
        suffix = "_%d" % number
        candidate = name[:64 - len(suffix)] + suffix
    return candidate


def call_name(item: Dict[str, Any], names: ToolNames) -> str:
    """The chat name of a call or tool choice: a namespaced one flattened as its tool was."""
    name = str(item.get("name") or "")
    namespace = item.get("namespace")
    if not namespace:
        return name
    return names.flat.get((namespace, name)) or flat_name(namespace, name)


def chat_tool_choice(choice: Any, names: ToolNames) -> Any:
    """Chat's tool_choice for Responses' one; raises ClientError for a choice of built-in tools."""
    if choice in ("auto", "none", "required"):
        return choice
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind in ("function", "custom"):
        return {"type": "function", "function": {"name": call_name(choice, names)}}
    if kind == "allowed_tools":
        allowed = [{"type": "function", "function": {"name": call_name(tool, names)}}
                   for tool in choice.get("tools") or [] if isinstance(tool, dict)
                   and tool.get("type") in ("function", "custom")]
        if allowed:
            return {"type": "allowed_tools", "allowed_tools": {"mode": choice.get("mode"), "tools": allowed}}
    raise ClientError(400, "tool_choice %s cannot be honoured by a Chat Completions upstream (only function and "
                      "custom tools are sent)" % json.dumps(choice), "unsupported_parameter")
