"""Responses -> Chat Completions requests: messages, tools and options, and the plan to map the answer back."""

import json
import logging
from typing import Any, Dict, FrozenSet, List, Mapping, NamedTuple, Optional, Tuple

from .chat_tools import CUSTOM_INPUT, ToolNames, call_name, chat_tool_choice, chat_tools, offered_tools
from .errors import ClientError

logger = logging.getLogger(__name__)

NO_OUTPUT = "(no output)"
PART_JOINER = "\n"  # between the text parts of one message, of one output, of one reasoning item
TEXT_PARTS = ("input_text", "output_text", "text", "refusal")
# Request fields the final Responses `response` object repeats (chat_answer's ECHO_DEFAULTS, and store).
ECHOED = ("background", "instructions", "max_output_tokens", "max_tool_calls", "metadata", "parallel_tool_calls",
          "previous_response_id", "prompt", "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention",
          "reasoning", "safety_identifier", "service_tier", "store", "temperature", "text", "tool_choice", "tools",
          "top_logprobs", "top_p", "truncation", "user", "image")
# State kept by OpenAI's servers, which a Chat Completions upstream does not have.
UNHONOURABLE = ("previous_response_id", "conversation", "prompt")


class ChatPlan(NamedTuple):
    """What the answer translation needs to map the chat answer back to Responses items."""

    model: str  # the model the client asked for ("" if none)
    custom_tools: FrozenSet[str]  # chat names standing for custom tools: their calls go back as custom_tool_call
    namespaced: Mapping[str, Tuple[str, str]]  # flattened chat name -> (namespace, name)
    call_ids: FrozenSet[str]  # call ids already in the conversation
    echo: Mapping[str, Any]  # ECHOED fields as the client sent them, None where absent


def to_chat(request: Dict[str, Any]) -> Tuple[Dict[str, Any], ChatPlan]:
    """The Chat Completions request for a Responses request, and the plan for its answer; raises ClientError.

    Stable bytes, for the upstream's prompt cache: the same request gives the same dict, in a fixed key
    order, and a request that extends the conversation gives messages that start with the earlier ones.
    Two inputs Codex never sends break that prefix: an assistant message that ends one request and is
    followed by calls in the next (they merge), and a call whose output comes only in a later request.
    JSON values of the request (schemas, arguments) are shared, not copied: treat both as read-only.
    """
    for field in UNHONOURABLE:
        if request.get(field) is not None:
            raise ClientError(400, "%s cannot be honoured by a Chat Completions upstream; send the whole conversation "
                              "as input (Codex does)" % field, "unsupported_parameter")
    items = input_items(request.get("input"))
    tools, names = chat_tools(offered_tools(request.get("tools"), items))
    model = request.get("model") if isinstance(request.get("model"), str) else ""
    chat: Dict[str, Any] = {"model": model} if model else {}
    chat["messages"] = chat_messages(request.get("instructions"), items, names)
    if not chat["messages"]:
        raise ClientError(400, "the request has neither instructions nor input to send", "missing_required_parameter")
    if tools:  # without tools, chat servers refuse tool_choice and parallel_tool_calls
        chat["tools"] = tools
        if request.get("tool_choice") is not None:
            chat["tool_choice"] = chat_tool_choice(request["tool_choice"], names)
        if request.get("parallel_tool_calls") is not None:
            chat["parallel_tool_calls"] = request["parallel_tool_calls"]
    chat.update(chat_options(request))
    chat["stream"] = True
    chat["stream_options"] = {"include_usage": True}
    used = frozenset(item["call_id"] for item in items if isinstance(item.get("call_id"), str))
    echo = {field: request.get(field) for field in ECHOED}
    return chat, ChatPlan(model, names.custom, names.namespaced, used, echo)


def input_items(value: Any) -> List[Dict[str, Any]]:
    """The request's input as a list of items: a string is one user message."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ClientError(400, "input must be a string or a list of item objects", "invalid_request")
    return value


def chat_options(request: Dict[str, Any]) -> Dict[str, Any]:
    """The options with a chat equivalent; the Responses-only ones (store, include, verbosity...) are left out."""
    options: Dict[str, Any] = {}
    for source, target in (("temperature", "temperature"), ("top_p", "top_p"), ("max_output_tokens", "max_tokens")):
        if request.get(source) is not None:
            options[target] = request[source]
    reasoning = request.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") is not None:
        options["reasoning_effort"] = reasoning["effort"]
    text = request.get("text")
    fmt = response_format(text.get("format")) if isinstance(text, dict) else None
    if fmt is not None:
        options["response_format"] = fmt
    if request.get("user") is not None:
        options["user"] = request["user"]
    return options


def response_format(fmt: Any) -> Optional[Dict[str, Any]]:
    """Chat's response_format for Responses' text.format, or None for plain text."""
    kind = fmt.get("type") if isinstance(fmt, dict) else fmt
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema" and isinstance(fmt, dict):
        schema = {key: fmt[key] for key in ("name", "description", "schema", "strict") if fmt.get(key) is not None}
        return {"type": "json_schema", "json_schema": schema}
    raise ClientError(400, "text.format %r has no Chat Completions equivalent" % (kind,), "unsupported_parameter")


# -- messages ---------------------------------------------------------------------------------------------------------

def chat_messages(instructions: Any, items: List[Dict[str, Any]], names: ToolNames) -> List[Dict[str, Any]]:
    """Chat messages for the instructions and the input items, in the same order."""
    if instructions is not None and not isinstance(instructions, str):
        raise ClientError(400, "instructions must be a string", "invalid_request")
    messages = Messages()
    if instructions:
        messages.plain({"role": "system", "content": instructions})
    for item in items:
        kind = item.get("type", "message" if "role" in item else None)
        role = item.get("role")
        if kind == "message" and role in ("system", "developer"):
            messages.plain({"role": "system", "content": joined_text(item.get("content"), role)})
        elif kind == "message" and role == "user":
            messages.plain({"role": "user", "content": user_content(item.get("content"))})
        elif kind == "message" and role == "assistant":
            messages.text(joined_text(item.get("content"), role))
        elif kind == "message":
            raise ClientError(400, "message role %r has no Chat Completions equivalent" % (role,), "invalid_request")
        elif kind in ("function_call", "custom_tool_call"):
            messages.call(call_id_of(item), call_name(item, names), call_arguments(item))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            messages.output(call_id_of(item), output_text(item.get("output")))
        elif kind == "reasoning":
            messages.reasoning(reasoning_text(item))
        elif kind != "additional_tools":  # its tools are offered; it is no message
            raise ClientError(400, "input item type %r cannot be sent to a Chat Completions upstream" % (kind,),
                              "unsupported_content")
    return messages.finish()


def call_id_of(item: Dict[str, Any]) -> str:
    """The item's call_id; raises ClientError when there is none."""
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise ClientError(400, "a %s input item has no call_id" % item.get("type"), "invalid_request")
    return call_id


def call_arguments(item: Dict[str, Any]) -> str:
    """A call's arguments as chat's JSON string: a custom call's freeform text as {"input": text}."""
    if item.get("type") == "custom_tool_call":
        return custom_arguments(str(item.get("input") or ""))
    arguments = item.get("arguments")
    if isinstance(arguments, str):
        return arguments
    return json.dumps({} if arguments is None else arguments, ensure_ascii=False)


def custom_arguments(text: str) -> str:
    """The JSON arguments that carry a freeform tool's text, encoded the same way every time."""
    return json.dumps({CUSTOM_INPUT: text}, ensure_ascii=False)


def content_parts(content: Any, role: str) -> List[Dict[str, Any]]:
    """A message's content as a list of parts: a string is one text part."""
    if isinstance(content, str):
        return [{"type": "input_text", "text": content}]
    if not isinstance(content, list) or not all(isinstance(part, dict) for part in content):
        raise ClientError(400, "%s message content must be a string or a list of parts" % role, "invalid_request")
    return content


def part_text(part: Dict[str, Any]) -> str:
    """The text of a text or refusal part."""
    return str(part.get("refusal") if part.get("type") == "refusal" else part.get("text") or "")


def joined_text(content: Any, role: str) -> str:
    """The texts of a system, developer or assistant message as one string; other parts are refused."""
    parts = content_parts(content, role)
    for part in parts:
        if part.get("type") not in TEXT_PARTS:
            raise ClientError(400, "content part %r in a %s message has no Chat Completions equivalent"
                              % (part.get("type"), role), "unsupported_content")
    return PART_JOINER.join(part_text(part) for part in parts)


def user_content(content: Any) -> Any:
    """A user message's content: a string when it is text only, else chat's text and image_url parts."""
    parts: List[Dict[str, Any]] = []
    for part in content_parts(content, "user"):
        kind = part.get("type")
        if kind in TEXT_PARTS:
            parts.append({"type": "text", "text": part_text(part)})
        elif kind == "input_image":
            parts.append(image_part(part))
        else:
            raise ClientError(400, "content part %r has no Chat Completions equivalent" % (kind,),
                              "unsupported_content")
    if all(part["type"] == "text" for part in parts):
        return PART_JOINER.join(part["text"] for part in parts)
    return parts


def image_part(part: Dict[str, Any]) -> Dict[str, Any]:
    """Chat's image_url part for an input_image; a file_id alone cannot travel (chat has no file store)."""
    url = part.get("image_url")
    if not isinstance(url, str) or not url:
        raise ClientError(400, "input_image needs an image_url (an https: or data: URL): a Chat Completions "
                          "upstream cannot read file_id %r" % (part.get("file_id"),), "unsupported_content")
    image = {"url": url}
    if part.get("detail") is not None:
        image["detail"] = part["detail"]
    return {"type": "image_url", "image_url": image}


def output_text(output: Any) -> str:
    """A tool output as chat's string: a list's text parts joined (chat tool messages hold text only)."""
    if isinstance(output, str):
        return output
    if not isinstance(output, list):
        return "" if output is None else json.dumps(output, ensure_ascii=False)
    texts = [part_text(part) for part in output if isinstance(part, dict) and part.get("type") in TEXT_PARTS]
    if len(texts) < len(output):
        logger.debug("tool output: %d parts other than text left out", len(output) - len(texts))
    return PART_JOINER.join(texts)


def reasoning_text(item: Dict[str, Any]) -> str:
    """A reasoning item's text: its content, else its summary (all there is when the content was encrypted)."""
    for field in ("content", "summary"):
        texts = [str(part.get("text") or "") for part in item.get(field) or [] if isinstance(part, dict)]
        if any(texts):
            return PART_JOINER.join(texts)
    return ""


class Messages:
    """The message list being built. An assistant message gathers the reasoning before it (as
    `reasoning_content`), its text and the calls right after it; the tool messages for its calls follow
    it at once, in call order, one per call.

    Repairs, because chat servers reject both an output without its call and a call without its output
    (each logged at DEBUG): an output whose call is not in the assistant message just before it (an
    orphan, or one that comes after other messages) is dropped; a call without an output gets the tool
    message "(no output)", which keeps the call in the history. Several outputs for one call (Codex's
    `exec` notifications) become one tool message, their texts joined. Reasoning that no assistant
    message follows is dropped.
    """

    def __init__(self) -> None:
        self.out: List[Dict[str, Any]] = []
        self.thoughts: List[str] = []
        self.content: Optional[str] = None
        self.calls: List[Dict[str, Any]] = []
        self.answers: Optional[Dict[str, List[str]]] = None  # call id -> outputs, for the last calls

    def plain(self, message: Dict[str, Any]) -> None:
        self.flush()
        self.close()
        self.out.append(message)

    def reasoning(self, text: str) -> None:
        self.next_turn()
        self.thoughts.append(text)

    def text(self, text: str) -> None:
        self.next_turn()
        self.content = text

    def call(self, call_id: str, name: str, arguments: str) -> None:
        self.close()
        self.calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})

    def output(self, call_id: str, text: str) -> None:
        if self.calls:
            self.flush()
        if self.answers is None or call_id not in self.answers:
            logger.debug("tool output for call %s dropped: no call just before it has that id", call_id)
            return
        self.answers[call_id].append(text)

    def finish(self) -> List[Dict[str, Any]]:
        self.flush()
        self.close()
        return self.out

    def next_turn(self) -> None:
        """Reasoning or text after an assistant's text or calls starts the next assistant message."""
        if self.content is not None or self.calls:
            self.flush()
        self.close()

    def flush(self) -> None:
        thoughts, content, calls = [text for text in self.thoughts if text], self.content, self.calls
        self.thoughts, self.content, self.calls = [], None, []
        if content is None and not calls:
            if thoughts:
                logger.debug("reasoning with no assistant message after it dropped")
            return
        message: Dict[str, Any] = {"role": "assistant", "content": content}
        if thoughts:
            message["reasoning_content"] = PART_JOINER.join(thoughts)
        if calls:
            message["tool_calls"] = calls
            self.answers = dict((call["id"], []) for call in calls)
        self.out.append(message)

    def close(self) -> None:
        answers, self.answers = self.answers, None
        for call_id, texts in (answers or {}).items():
            if not texts:
                logger.debug("call %s has no output: sent %r", call_id, NO_OUTPUT)
            self.out.append({"role": "tool", "tool_call_id": call_id,
                             "content": PART_JOINER.join(texts) if texts else NO_OUTPUT})
