"""``--check``: minimal streamed requests to each endpoint, what they found, and the one-line diagnosis of a failure."""

import time
from typing import Any, List, NamedTuple, Optional, TextIO, Tuple, Union

from .check_diagnosis import Probe, api_advice, failure_line
from .endpoints import Endpoint
from .errors import UpstreamFailure
from .http1 import upstream_headers
from .quirks import KNOWN, refused_parameter, without
from .replies import json_body
from .routes import OPERATION_NAMES, mask_secrets, operation_url_protocol, redact_url, upstream_url
from .sse import StreamVerdict, data_json, error_text
from .upstream import Upstream, json_error
from .usage_log import UsageLog

# The model asked for when FORCED_MODEL is not set: the one config_template.toml gives Codex.
DEFAULT_MODEL = "gpt-5"
# The smallest cap the OpenAI Responses API takes (it refuses max_output_tokens below 16).
MAX_TOKENS = 16
# A base URL is asked in both APIs, Codex's first.
PROTOCOLS = ("responses", "chat")
# How a stream that ended properly ended, by protocol and outcome.
ENDINGS = {("responses", StreamVerdict.COMPLETE): "response.completed",
           ("responses", StreamVerdict.INCOMPLETE): "response.incomplete: the check asks for few tokens",
           ("chat", StreamVerdict.COMPLETE): "a finish_reason, then data: [DONE]"}
# Failures of the connection itself: the other API's path on the same host would fail the same way.
UNREACHED = frozenset(("dns", "connect", "tls", "timeout"))
CHECK_HEADERS = (("Content-Type", "application/json"), ("Accept", "text/event-stream"))
MESSAGE_LENGTH = 200
LABEL = "%-14s%s"


def check_request(protocol: str, model: str) -> dict:
    """The smallest streamed request of ``protocol``: one word in, a few tokens out."""
    if protocol == "responses":
        return {"model": model, "input": "ping", "max_output_tokens": MAX_TOKENS, "stream": True, "store": False}
    return {"model": model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": MAX_TOKENS,
            "stream": True, "stream_options": {"include_usage": True}}


def probe_urls(endpoint: str) -> List[Tuple[str, str]]:
    """(protocol, url) to ask: a full operation URL in its own API, a base URL in both."""
    named = operation_url_protocol(endpoint)
    protocols = (named,) if named is not None else PROTOCOLS
    return [(protocol, upstream_url(endpoint, OPERATION_NAMES[protocol])) for protocol in protocols]


def _seconds(value: float) -> str:
    return "%.3f s" % value


def _probe_lines(probe: Probe) -> List[str]:
    lines = ["POST %s" % probe.url]
    if probe.status is None:
        lines.append("  " + LABEL % ("status", "no answer: " + probe.detail))
    else:
        lines.append("  " + LABEL % ("status", "%d%s" % (probe.status, (": " + probe.message) if probe.message
                                                        else "")))
    if probe.first_byte is not None:
        lines.append("  " + LABEL % ("first byte", _seconds(probe.first_byte)))
    lines.append("  " + LABEL % ("total", _seconds(probe.seconds)))
    if probe.verdict is not None:
        ending = ENDINGS.get((probe.protocol, probe.verdict.outcome))
        if ending:
            ended = "ended properly (%s)" % ending
        elif probe.verdict.outcome == StreamVerdict.FAILED:
            ended = "ended with an error no retry changes (%s)" % probe.verdict.detail
        else:
            ended = "did not end properly (%s)" % probe.verdict.detail
        lines.append("  " + LABEL % ("stream", ended))
    elif probe.kind in ("cut", "unterminated", "stream_error"):
        lines.append("  " + LABEL % ("stream", "did not end properly (%s)" % probe.detail))
    elif probe.status == 200 and not probe.kind:
        lines.append("  " + LABEL % ("stream", "none: a JSON answer, not a stream"))
    if probe.model:
        lines.append("  " + LABEL % ("model", probe.model))
    if probe.dropped:
        lines.append("  " + LABEL % ("refused", "%s, so asked again without (as the proxy does)"
                                     % ", ".join(probe.dropped)))
    return lines


class Checked(NamedTuple):
    """One endpoint's check: the endpoint, the model asked for, and what each request found."""

    endpoint: Endpoint
    model: str
    probes: List[Probe]


def model_line(endpoint: Endpoint, forced_model: str) -> str:
    """The model the check asks the endpoint for, and the setting that chose it."""
    own = endpoint.setting("MODEL")
    if not endpoint.model:
        unset = "neither %s nor FORCED_MODEL is set" % own if endpoint.number else "%s is not set" % own
        return "%s (%s; %s=NAME python proxy.py --check asks for NAME)" % (DEFAULT_MODEL, unset, own)
    if endpoint.number and endpoint.model == forced_model:
        return "%s (%s, else FORCED_MODEL)" % (endpoint.model, own)
    return "%s (%s)" % (endpoint.model, own)


def section(checked: Checked, forced_model: str) -> Tuple[List[str], Optional[str]]:
    """One endpoint's lines, and the one line on why it fails (None: the proxy would work with it)."""
    endpoint, probes = checked.endpoint, checked.probes
    named = operation_url_protocol(endpoint.url)
    kind = "a full %s URL" % OPERATION_NAMES[named] if named else "a base URL"
    key = endpoint.setting("API_KEY")
    lines = [LABEL % ("endpoint", "%s (%s, %s=%s)" % (redact_url(endpoint.url), kind, endpoint.setting("UPSTREAM_API"),
                                                     endpoint.upstream_api)),
             LABEL % ("model", model_line(endpoint, forced_model)),
             LABEL % ("key", "%s is set" % key if endpoint.api_key else
                      "%s is empty: the check sends no key (the proxy passes the client's own)" % key),
             ""]
    for probe in probes:
        lines += _probe_lines(probe)
    urls = probe_urls(endpoint.url)
    if len(probes) < len(urls):
        lines.append("(%s not asked: the same host, it would fail the same way)"
                     % " and ".join(OPERATION_NAMES[protocol] for protocol, _ in urls[len(probes):]))
    lines.append("")
    ok, advice = api_advice(endpoint, probes)
    if advice is not None and ok:
        lines.append(LABEL % ("speaks", advice))
    return lines, None if ok else (advice or failure_line(endpoint, checked.model, probes))


def heading(endpoint: Endpoint) -> str:
    return "primary (%s)" % endpoint.setting("ENDPOINT") if not endpoint.number else endpoint.name


def _names(endpoints: List[Endpoint]) -> str:
    names = [endpoint.name for endpoint in endpoints]
    return names[0] if len(names) == 1 else "%s and %s" % (", ".join(names[:-1]), names[-1])


def summary(checks: List[Checked], failed: List[Endpoint]) -> str:
    """The last line with fallbacks: passed, or which endpoints fail (each one's result line says why)."""
    if not failed:
        return "check passed: %s work" % _names([checked.endpoint for checked in checks])
    if len(failed) == 1:
        return "check failed: %s does not work; its result line above says why and what to fix" % _names(failed)
    return "check failed: %s do not work; each one's result line above says why and what to fix" % _names(failed)


def report(config: Any, checks: List[Checked]) -> Tuple[str, int]:
    """The check's whole output and its exit code: 0 when the proxy would work with every endpoint, 1 when not.

    One endpoint: its lines, then "check passed" or "check failed: " and the cause. With fallbacks:
    one section per endpoint, each ending with its result, then the summary.
    """
    sections = [section(checked, config.forced_model) for checked in checks]
    failed = [checked.endpoint for checked, (_, failure) in zip(checks, sections) if failure is not None]
    if len(sections) == 1:
        lines, failure = sections[0]
        lines.append("check passed" if failure is None else "check failed: " + failure)
    else:
        lines = []
        for checked, (body, failure) in zip(checks, sections):
            lines += [heading(checked.endpoint)] + body + [
                LABEL % ("result", "works" if failure is None else "fails: " + failure), ""]
        lines.append(summary(checks, failed))
    # Each endpoint's own key as well as config.secrets: the report holds none, whoever lists the keys.
    secrets = tuple(config.secrets) + tuple(checked.endpoint.api_key for checked in checks if checked.endpoint.api_key)
    return mask_secrets("\n".join(lines) + "\n", secrets), 1 if failed else 0


def one_line(text: Union[str, bytes], limit: int = MESSAGE_LENGTH) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def error_message(body: Union[bytes, memoryview]) -> str:
    """An error body's message, on one line: its JSON error's, else its text."""
    error = json_error(bytes(body[:65536]))
    if error is not None:
        return one_line(str(error.get("message") or error_text(error)))
    return one_line(bytes(body[:2000]))


def reported_model(body: Union[bytes, memoryview]) -> str:
    """The first model a stream names (Azure's first chat chunk may name none)."""
    for line in bytes(body[:65536]).split(b"\n"):
        event = data_json(line.strip())
        if event is None:
            continue
        response = event.get("response")
        model = event.get("model") or (response.get("model") if isinstance(response, dict) else None)
        if model and isinstance(model, str):
            return model
    return ""


def probe(upstream: Upstream, config: Any, endpoint: Endpoint, protocol: str, url: str, model: str) -> Probe:
    """Ask ``url`` once in ``protocol`` with the endpoint's key (again without a parameter it refuses, as the proxy
    would)."""
    request = check_request(protocol, model)
    headers = upstream_headers(CHECK_HEADERS, endpoint.api_key)
    dropped: Tuple[str, ...] = ()
    while True:
        began = time.monotonic()
        heard: List[float] = []
        try:
            answer = upstream.attempt("POST", url, json_body(request), headers, protocol, began + config.total_timeout,
                                      lambda: True, fresh=True, on_headers=lambda: heard.append(time.monotonic()))
        except UpstreamFailure as failure:
            return Probe(protocol, redact_url(url), time.monotonic() - began, heard[0] - began if heard else None,
                         failure.status, model="", message=error_message(failure.body) if failure.body else "",
                         kind=failure.kind, detail=failure.detail, dropped=dropped)
        with answer:
            name = refused_parameter(answer.status, answer.body, request) if protocol == "chat" else None
            if name is not None and len(dropped) < len(KNOWN):
                dropped += (name,)
                request = without(request, frozenset((name,)))
                continue
            streamed = answer.verdict is not None
            return Probe(protocol, redact_url(url), time.monotonic() - began, heard[0] - began if heard else None,
                         answer.status, answer.verdict, reported_model(answer.body) if streamed else "",
                         "" if streamed else error_message(answer.body), dropped=dropped)


def check_endpoint(upstream: Upstream, config: Any, endpoint: Endpoint) -> Checked:
    """Ask one endpoint in each API it may speak, with its own URL, key and model; stop where it cannot be reached."""
    model = endpoint.model or DEFAULT_MODEL
    probes: List[Probe] = []
    for protocol, url in probe_urls(endpoint.url):
        probes.append(probe(upstream, config, endpoint, protocol, url, model))
        if probes[-1].kind in UNREACHED:
            break
    return Checked(endpoint, model, probes)


def run_check(config: Any, out: TextIO) -> int:
    """``python proxy.py --check``: ask every endpoint, write the report to ``out``, return the exit code.

    Raises ConfigError, as a start would, when USAGE_LOG cannot be opened (opened for appending, not written).
    """
    if config.usage_log:
        UsageLog(config.usage_log).close()
    upstream = Upstream(config)
    try:
        checks = [check_endpoint(upstream, config, endpoint) for endpoint in config.endpoints]
    finally:
        upstream.close()
    text, code = report(config, checks)
    out.write(text)
    out.flush()
    return code
