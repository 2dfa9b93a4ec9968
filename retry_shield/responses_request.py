"""Chat Completions -> Responses requests: messages, tools, options (each as PARAMETERS says), the answer's plan."""

import json
import logging
from typing import Any, Dict, FrozenSet, List, NamedTuple, Optional, Tuple

from .errors import ClientError

logger = logging.getLogger(__name__)

INSTRUCTIONS_JOINER = "\n\n"  # between the leading system / developer messages that become `instructions`
PART_JOINER = "\n"  # between the text parts of one system message, of one tool output
INSTRUCTION_ROLES = ("system", "developer")
DEFAULT_FORMAT_NAME = "response"  # a json_schema response_format without a name (Responses requires one)

MAPPED, KEPT, DROPPED, REFUSED = "mapped", "kept", "dropped", "refused"


class Handling(NamedTuple):
    """What the translation does with one Chat Completions parameter."""

    action: str  # MAPPED (translated by code), KEPT (same name and value), DROPPED (left out), REFUSED (a 400)
    neutral: Tuple[Any, ...] = ()  # REFUSED only: values that ask for nothing, left out silently
    why: str = ""  # REFUSED: the reason given in the 400; otherwise what happens


# Every parameter of openai-python's CompletionCreateParams (the tests hold the two sets equal); a parameter
# not listed here is refused with a 400 that names it. A null value counts as absent for every parameter.
PARAMETERS: Dict[str, Handling] = {
    "messages": Handling(MAPPED, why="leading system / developer messages -> instructions, the rest -> input items"),
    "model": Handling(MAPPED, why="kept; the plan records it"),
    "stream": Handling(MAPPED, why="always true upstream: the proxy buffers, and answers a client as it asked"),
    "stream_options": Handling(MAPPED, why="left out; include_usage recorded in the plan for the answer"),
    "tools": Handling(MAPPED, why="function tools flattened; strict: false unless the client set it"),
    "tool_choice": Handling(MAPPED, why="auto, none, required, a named function, allowed_tools"),
    "parallel_tool_calls": Handling(MAPPED, why="kept when tools are offered"),
    "max_tokens": Handling(MAPPED, why="-> max_output_tokens"),
    "max_completion_tokens": Handling(MAPPED, why="-> max_output_tokens"),
    "response_format": Handling(MAPPED, why="-> text.format, json_schema flattened"),
    "verbosity": Handling(MAPPED, why="-> text.verbosity"),
    "reasoning_effort": Handling(MAPPED, why="-> reasoning.effort"),
    "temperature": Handling(KEPT),
    "top_p": Handling(KEPT),
    "user": Handling(KEPT),
    "metadata": Handling(KEPT),
    "safety_identifier": Handling(KEPT),
    "prompt_cache_key": Handling(KEPT),
    "prompt_cache_retention": Handling(KEPT),
    "prompt_cache_options": Handling(KEPT),
    "service_tier": Handling(KEPT),
    "moderation": Handling(KEPT),
    "store": Handling(DROPPED, why="the request always says store: false; storing never changes the answer"),
    "prediction": Handling(DROPPED, why="a predicted output only speeds an answer up; the answer is the same without"),
    "n": Handling(REFUSED, (1,), "a Responses upstream gives one answer per request; send n: 1 or leave it out"),
    "logprobs": Handling(REFUSED, (False,), "the translated answer carries no log probabilities"),
    "top_logprobs": Handling(REFUSED, (0,), "the translated answer carries no log probabilities"),
    "logit_bias": Handling(REFUSED, ({},), "the Responses API has no logit_bias"),
    "presence_penalty": Handling(REFUSED, (0,), "the Responses API has no presence_penalty; send 0 or leave it out"),
    "frequency_penalty": Handling(REFUSED, (0,), "the Responses API has no frequency_penalty; send 0 or leave it out"),
    "seed": Handling(REFUSED, (), "the Responses API has no seed: the answer could not be reproduced as asked"),
    "stop": Handling(REFUSED, ("", []), "the Responses API has no stop sequences"),
    "modalities": Handling(REFUSED, (["text"], []), "only text answers can be translated"),
    "audio": Handling(REFUSED, (), "only text answers can be translated"),
    "functions": Handling(REFUSED, ([],), "legacy function calling is not translated; send tools instead"),
    "function_call": Handling(REFUSED, ("none", "auto"), "legacy function calling is not translated; send tool_choice"),
    "web_search_options": Handling(REFUSED, (), "web search results and citations are not translated back"),
}


class ResponsesPlan(NamedTuple):
    """What the answer translation needs to give a Chat Completions client its answer."""

    model: str  # the model the client asked for ("" if none)
    include_usage: bool  # the client asked stream_options.include_usage (a streaming client then gets a usage chunk)
    tool_names: FrozenSet[str]  # the function names offered, so that a call can be checked


def to_responses(request: Dict[str, Any]) -> Tuple[Dict[str, Any], ResponsesPlan]:
    """The Responses request for a Chat Completions request, and the plan for its answer; raises ClientError.

    Messages: the system and developer messages that lead (when a message that gives input follows) become
    `instructions`, joined by a blank line; every other message becomes input items in the same order:
    system / developer / user messages with input parts, an assistant message as a message item with
    `output_text` (and `refusal`) parts followed by one `function_call` item per tool call, a tool
    message as a `function_call_output`. Left out, as the Responses API has no place for them: a
    message's `name`, and an assistant's `reasoning_content` (DeepSeek's; reasoning can be sent back to
    a Responses upstream only as its own encrypted items, which a chat client never had). No request
    asks for reasoning summaries: organisations not verified for them get a 400.

    The same request gives the same dict, keys in a fixed order whatever the client's order, and a
    request that extends a conversation gives input that starts with the earlier input. JSON values of
    the request (schemas, metadata) are shared, not copied: treat both as read-only.
    """
    check_parameters(request)
    instructions, items = responses_input(request.get("messages"))
    tools = responses_tools(request.get("tools"))
    names = frozenset(tool["name"] for tool in tools)
    model = request.get("model") if isinstance(request.get("model"), str) else ""
    out: Dict[str, Any] = {"model": model} if model else {}
    if instructions is not None:
        out["instructions"] = instructions
    out["input"] = items
    if tools:
        out["tools"] = tools
        if request.get("tool_choice") is not None:
            out["tool_choice"] = responses_tool_choice(request["tool_choice"], names)
        if request.get("parallel_tool_calls") is not None:
            out["parallel_tool_calls"] = request["parallel_tool_calls"]
    elif request.get("tool_choice") not in (None, "auto", "none"):
        raise ClientError(400, "tool_choice %s asks for a tool call, but the request offers no tools"
                          % json.dumps(request["tool_choice"])[:200], "unsupported_parameter")
    out.update(responses_options(request))
    out["store"] = False
    out["stream"] = True
    return out, ResponsesPlan(model, include_usage(request.get("stream_options")), names)


def check_parameters(request: Dict[str, Any]) -> None:
    """Raises ClientError for the first parameter, in the client's order, that PARAMETERS refuses or lacks."""
    for name, value in request.items():
        if value is None:
            continue
        handling = PARAMETERS.get(name)
        if handling is None:
            raise ClientError(400, "parameter %r has no Responses API equivalent, and the upstream speaks only the "
                              "Responses API: leave it out" % name, "unsupported_parameter")
        if handling.action == REFUSED and value not in handling.neutral:
            raise ClientError(400, "parameter %r cannot be honoured by a Responses API upstream: %s"
                              % (name, handling.why), "unsupported_parameter")
        if handling.action == DROPPED:
            logger.debug("parameter %s left out: %s", name, handling.why)


def include_usage(options: Any) -> bool:
    """Whether stream_options asks for the usage chunk."""
    if options is not None and not isinstance(options, dict):
        raise ClientError(400, "stream_options must be an object", "invalid_request")
    return bool(options and options.get("include_usage"))


# -- options ----------------------------------------------------------------------------------------------------------

def responses_options(request: Dict[str, Any]) -> Dict[str, Any]:
    """max_output_tokens, reasoning, text, then the KEPT parameters in the order of PARAMETERS."""
    out: Dict[str, Any] = {}
    limits = [request[name] for name in ("max_completion_tokens", "max_tokens") if request.get(name) is not None]
    if len(limits) == 2 and limits[0] != limits[1]:
        raise ClientError(400, "max_tokens (%s) and max_completion_tokens (%s) disagree: send one of them"
                          % (limits[1], limits[0]), "unsupported_parameter")
    if limits:
        out["max_output_tokens"] = limits[0]
    if request.get("reasoning_effort") is not None:
        out["reasoning"] = {"effort": request["reasoning_effort"]}
    text: Dict[str, Any] = {}
    if request.get("response_format") is not None:
        text["format"] = text_format(request["response_format"])
    if request.get("verbosity") is not None:
        text["verbosity"] = request["verbosity"]
    if text:
        out["text"] = text
    for name, handling in PARAMETERS.items():
        if handling.action == KEPT and request.get(name) is not None:
            out[name] = request[name]
    return out


def text_format(fmt: Any) -> Dict[str, Any]:
    """Responses' text.format for chat's response_format: json_schema's fields one level up, strict: false
    unless the client set it (chat's default; a Responses upstream might otherwise apply its own)."""
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind in ("text", "json_object"):
        return {"type": kind}
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise ClientError(400, "response_format.json_schema.schema is missing: a Responses API upstream needs "
                              "the schema", "unsupported_parameter")
        out: Dict[str, Any] = {"type": "json_schema", "name": spec.get("name") or DEFAULT_FORMAT_NAME}
        if spec.get("description") is not None:
            out["description"] = spec["description"]
        out["schema"] = spec["schema"]
        out["strict"] = False if spec.get("strict") is None else spec["strict"]
        return out
    raise ClientError(400, "response_format %s has no Responses API equivalent (text, json_object and json_schema "
                      "have)" % json.dumps(fmt)[:200], "unsupported_parameter")


# -- tools ------------------------------------------------------------------------------------------------------------

def responses_tools(tools: Any) -> List[Dict[str, Any]]:
    """Responses function tools for chat's; other kinds (custom tools) are refused, as their calls could not
    be answered in chat's form."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise ClientError(400, "tools must be a list", "invalid_request")
    out: List[Dict[str, Any]] = []
    for index, tool in enumerate(tools):
        where = "tools[%d]" % index
        if not isinstance(tool, dict):
            raise ClientError(400, "%s must be an object" % where, "invalid_request")
        if tool.get("type", "function") != "function":
            raise ClientError(400, "%s: tools of type %r cannot be sent to a Responses API upstream by the proxy "
                              "(function tools can)" % (where, tool.get("type")), "unsupported_parameter")
        out.append(function_tool(tool.get("function"), where))
    return out


def function_tool(function: Any, where: str) -> Dict[str, Any]:
    """A Responses function tool. `strict` is always sent, false unless the client set it: chat's functions
    are not strict by default, and a Responses upstream makes a tool without `strict` strict (which
    rewrites optional fields as required, or rejects the schema). No `parameters` means no arguments."""
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise ClientError(400, "%s.function.name is missing" % where, "invalid_request")
    out: Dict[str, Any] = {"type": "function", "name": function["name"]}
    if function.get("description") is not None:
        out["description"] = function["description"]
    parameters = function.get("parameters")
    out["parameters"] = parameters if parameters is not None else {
        "type": "object", "properties": {}, "additionalProperties": False}
    out["strict"] = False if function.get("strict") is None else function["strict"]
    return out


def responses_tool_choice(choice: Any, names: FrozenSet[str]) -> Any:
    """Responses' tool_choice for chat's; a function it names must be among the tools offered."""
    if choice in ("auto", "none", "required"):
        return choice
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "function":
        return {"type": "function", "name": offered_name(choice.get("function"), names)}
    allowed = choice.get("allowed_tools") if kind == "allowed_tools" else None
    if isinstance(allowed, dict) and isinstance(allowed.get("tools"), list) and allowed["tools"]:
        tools = []
        for tool in allowed["tools"]:
            if not isinstance(tool, dict) or tool.get("type") != "function":
                break
            tools.append({"type": "function", "name": offered_name(tool.get("function"), names)})
        else:
            return {"type": "allowed_tools", "mode": allowed.get("mode"), "tools": tools}
    raise ClientError(400, "tool_choice %s cannot be honoured by a Responses API upstream (only function tools are "
                      "sent)" % json.dumps(choice)[:200], "unsupported_parameter")


def offered_name(function: Any, names: FrozenSet[str]) -> str:
    """The function name a tool choice gives; raises ClientError when the tools do not offer it."""
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or name not in names:
        raise ClientError(400, "tool_choice names function %r, which tools does not offer" % (name,),
                          "unsupported_parameter")
    return name


# -- messages ---------------------------------------------------------------------------------------------------------

def responses_input(messages: Any) -> Tuple[Optional[str], List[Dict[str, Any]]]:
    """The instructions (None when there are none) and the input items for chat's messages."""
    if not isinstance(messages, list) or not messages:
        raise ClientError(400, "messages must be a non-empty list", "missing_required_parameter")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ClientError(400, "messages[%d] must be an object" % index, "invalid_request")
    lead = 0
    while lead < len(messages) and messages[lead].get("role") in INSTRUCTION_ROLES:
        lead += 1
    items = [item for index in range(lead, len(messages))
             for item in message_items(messages[index], "messages[%d]" % index)]
    if not items:  # nothing gives input after them: they stay input themselves, so that the input is not empty
        lead, items = 0, [item for index, message in enumerate(messages)
                          for item in message_items(message, "messages[%d]" % index)]
    if not items:
        raise ClientError(400, "messages hold nothing to send", "missing_required_parameter")
    texts = [joined_text(messages[index].get("content"), "messages[%d]" % index) for index in range(lead)]
    instructions = INSTRUCTIONS_JOINER.join(text for text in texts if text) or None
    return instructions, items


def message_items(message: Dict[str, Any], where: str) -> List[Dict[str, Any]]:
    """The input items for one chat message (none for an assistant message with neither text nor calls)."""
    role = message.get("role")
    if role in INSTRUCTION_ROLES or role == "user":
        parts = [input_part(part, "%s.content" % where) for part in content_parts(message.get("content"), where)]
        return [{"type": "message", "role": role, "content": parts}]
    if role == "assistant":
        return assistant_items(message, where)
    if role == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise ClientError(400, "%s: a tool message needs its tool_call_id" % where, "invalid_request")
        return [{"type": "function_call_output", "call_id": call_id, "output": tool_output(message, where)}]
    if role == "function":
        raise ClientError(400, "%s: legacy function messages are not translated; send tool messages (with "
                          "tool_call_id) instead" % where, "unsupported_content")
    raise ClientError(400, "%s: message role %r has no Responses API equivalent" % (where, role), "invalid_request")


def content_parts(content: Any, where: str) -> List[Dict[str, Any]]:
    """A message's content as a list of parts: a string is one text part."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not all(isinstance(part, dict) for part in content):
        raise ClientError(400, "%s.content must be a string or a list of parts" % where, "invalid_request")
    return content


def text_of(part: Dict[str, Any], where: str) -> str:
    """The text of a text part; raises ClientError for any other part."""
    if part.get("type") != "text" or not isinstance(part.get("text"), str):
        raise ClientError(400, "%s: a content part of type %r where only text parts can be" % (where, part.get("type")),
                          "unsupported_content")
    return part["text"]


def joined_text(content: Any, where: str) -> str:
    """The text parts of a system message, or of a tool message, as one string."""
    return PART_JOINER.join(text_of(part, "%s.content" % where) for part in content_parts(content, where))


def input_part(part: Dict[str, Any], where: str) -> Dict[str, Any]:
    """Responses' input part for one chat content part: text, image_url (detail "auto" unless given), file."""
    kind = part.get("type")
    if kind == "text":
        out: Dict[str, Any] = {"type": "input_text", "text": text_of(part, where)}
    elif kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image  # a bare URL string: some clients send it
        if not isinstance(url, str) or not url:
            raise ClientError(400, "%s: an image_url part needs its url" % where, "invalid_request")
        detail = image.get("detail") if isinstance(image, dict) else None
        out = {"type": "input_image", "image_url": url, "detail": detail or "auto"}
    elif kind == "file":
        spec = part.get("file") if isinstance(part.get("file"), dict) else {}
        if not spec.get("file_data") and not spec.get("file_id"):
            raise ClientError(400, "%s: a file part needs its file_data or file_id" % where, "invalid_request")
        out = {"type": "input_file"}
        out.update((key, spec[key]) for key in ("file_id", "file_data", "filename") if spec.get(key) is not None)
    else:
        raise ClientError(400, "%s: content part %r has no Responses API equivalent (text, image_url and file have)"
                          % (where, kind), "unsupported_content")
    if part.get("prompt_cache_breakpoint") is not None:
        out["prompt_cache_breakpoint"] = part["prompt_cache_breakpoint"]
    return out


def tool_output(message: Dict[str, Any], where: str) -> Any:
    """A tool message's output: its text (parts joined), or Responses parts when it holds images or files."""
    content = message.get("content")
    if content is None:
        return ""
    parts = content_parts(content, where)
    if all(part.get("type") == "text" for part in parts):
        return joined_text(content, where)
    return [input_part(part, "%s.content" % where) for part in parts]


def assistant_items(message: Dict[str, Any], where: str) -> List[Dict[str, Any]]:
    """An assistant message as a message item (text as output_text parts, a refusal as a refusal part, empty
    text left out), then one function_call item per tool call."""
    for field, what in (("function_call", "legacy function calls are not translated; send tool_calls"),
                        ("audio", "earlier audio answers cannot be sent to a Responses API upstream")):
        if message.get(field) is not None:
            raise ClientError(400, "%s.%s: %s" % (where, field, what), "unsupported_content")
    content = message.get("content")
    parts: List[Dict[str, Any]] = []
    for part in [] if content is None else content_parts(content, where):
        if part.get("type") == "refusal" and isinstance(part.get("refusal"), str):
            parts.append({"type": "refusal", "refusal": part["refusal"]})
        elif text_of(part, "%s.content" % where):
            parts.append({"type": "output_text", "text": part["text"]})
    if isinstance(message.get("refusal"), str) and message["refusal"]:
        parts.append({"type": "refusal", "refusal": message["refusal"]})
    if message.get("reasoning_content"):
        logger.debug("%s: reasoning_content left out (a Responses upstream takes back only its own reasoning)", where)
    items = [{"type": "message", "role": "assistant", "content": parts}] if parts else []
    calls = message.get("tool_calls")
    if calls is not None and not isinstance(calls, list):
        raise ClientError(400, "%s.tool_calls must be a list" % where, "invalid_request")
    for index, call in enumerate(calls or []):
        items.append(function_call(call, "%s.tool_calls[%d]" % (where, index)))
    if not items:
        logger.debug("%s: assistant message with neither text nor calls left out", where)
    return items


def function_call(call: Any, where: str) -> Dict[str, Any]:
    """A function_call item for one of chat's tool calls; arguments that are not a string are JSON-encoded."""
    if not isinstance(call, dict):
        raise ClientError(400, "%s must be an object" % where, "invalid_request")
    if call.get("type", "function") != "function":
        raise ClientError(400, "%s: tool calls of type %r are not translated (function calls are)"
                          % (where, call.get("type")), "unsupported_content")
    function = call.get("function")
    if not isinstance(call.get("id"), str) or not call["id"]:
        raise ClientError(400, "%s: a tool call needs its id" % where, "invalid_request")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise ClientError(400, "%s.function.name is missing" % where, "invalid_request")
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        arguments = json.dumps({} if arguments is None else arguments, ensure_ascii=False)
    return {"type": "function_call", "call_id": call["id"], "name": function["name"], "arguments": arguments}
