"""``--check``: minimal streamed requests to each endpoint, what they found, and the one-line diagnosis of a failure."""

import re
import time
import urllib.parse
from typing import Any, List, NamedTuple, Optional, TextIO, Tuple, Union

from .endpoints import Endpoint
from .errors import UpstreamFailure
from .http1 import upstream_headers
from .quirks import KNOWN, refused_parameter, without
from .replies import NAMES_A_MODEL, json_body, says_no_such_path
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
API_NAMES = {"responses": "the Responses API", "chat": "Chat Completions"}
REQUESTS = {"responses": "Responses (Codex)", "chat": "Chat Completions"}
# How a stream that ended properly ended, by protocol and outcome.
ENDINGS = {("responses", StreamVerdict.COMPLETE): "response.completed",
           ("responses", StreamVerdict.INCOMPLETE): "response.incomplete: the check asks for few tokens",
           ("chat", StreamVerdict.COMPLETE): "a finish_reason, then data: [DONE]"}
# Failures of the connection itself: the other API's path on the same host would fail the same way.
UNREACHED = frozenset(("dns", "connect", "tls", "timeout"))
CHECK_HEADERS = (("Content-Type", "application/json"), ("Accept", "text/event-stream"))
API_VERSION = re.compile(r"api[-_ ]?version", re.IGNORECASE)
MESSAGE_LENGTH = 200
LABEL = "%-14s%s"
MODEL_FIX = ("check with a model it serves: FORCED_MODEL=NAME python proxy.py --check (on Azure NAME is a deployment's "
             "name), then set FORCED_MODEL, or the model in your client, to it")
# The causes name the primary's settings; for a fallback, each is renamed to its own (FALLBACK_1_API_KEY).
SUFFIXES = ("ENDPOINT", "API_KEY", "MODEL", "UPSTREAM_API")
PRIMARY_NAMES = {Endpoint(0, "").setting(suffix): suffix for suffix in SUFFIXES}
PRIMARY_SETTING = re.compile(r"\b(%s)\b" % "|".join(PRIMARY_NAMES))


class Probe(NamedTuple):
    """What one check request found: an answer (``status``) or a failure before one (``kind``)."""

    protocol: str  # "responses" or "chat": the API it was asked in
    url: str  # redacted
    seconds: float
    first_byte: Optional[float] = None  # seconds to the status line and headers; None: none came
    status: Optional[int] = None
    verdict: Optional[StreamVerdict] = None  # None: no stream was judged (an error, a JSON answer)
    model: str = ""  # the model the upstream reported
    message: str = ""  # the upstream's error message, on one line
    kind: str = ""  # UpstreamFailure.kind when there was no answer to judge
    detail: str = ""  # UpstreamFailure.detail
    dropped: Tuple[str, ...] = ()  # parameters the upstream refused, so asked again without (as the proxy does)


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


def works(probe: Probe) -> bool:
    """Whether the probe got a stream that ended properly, with an answer (not a final error)."""
    verdict = probe.verdict
    return probe.status == 200 and verdict is not None and verdict.outcome in (
        StreamVerdict.COMPLETE, StreamVerdict.INCOMPLETE)


def refuted(probe: Probe) -> bool:
    """Whether the upstream said it does not speak the probe's API: no such path, or an answer in the other API."""
    return probe.kind == "wrong_api" or (probe.status == 404 and says_no_such_path(probe.message.encode("utf-8")))


def _where(endpoint: str) -> str:
    parts = urllib.parse.urlsplit(endpoint)
    return "%s port %d" % (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))


def _said(probe: Probe) -> str:
    return "HTTP %d%s" % (probe.status or 0, (": " + probe.message) if probe.message else "")


def _key_cause(probe: Probe, api_key: str) -> str:
    refused = "the upstream refused the credentials (%s)" % _said(probe)
    if not api_key:
        return refused + "; AZURE_API_KEY is empty, so no key was sent: set AZURE_API_KEY to the upstream's key"
    network = " (a 403 can also mean the resource's network rules do not admit this machine)" if probe.status == 403 \
        else ""
    return refused + "; check AZURE_API_KEY: the key of this endpoint's resource or account%s" % network


def _not_found_cause(probe: Probe, endpoint: str, model: str) -> str:
    path = urllib.parse.urlsplit(endpoint).path
    if not refuted(probe) and NAMES_A_MODEL.search(probe.message):
        if "/deployments/" in path:
            return ("Azure has no such deployment (%s); check the deployment name in AZURE_ENDPOINT "
                    "(.../openai/deployments/NAME/...: the Azure portal lists them)" % _said(probe))
        return "the upstream has no model %s (%s); %s" % (model, _said(probe), MODEL_FIX)
    query = " (or its api-version)" if "api-version" in urllib.parse.urlsplit(endpoint).query else ""
    return ("the upstream has no %s (%s); check the path%s in AZURE_ENDPOINT: a base URL such as "
            "https://NAME.openai.azure.com/openai/v1 or https://api.openai.com/v1, or a full .../chat/completions "
            "or .../responses URL" % (urllib.parse.urlsplit(probe.url).path, _said(probe), query))


def _status_cause(probe: Probe, endpoint: str, api_key: str, model: str) -> str:
    status = probe.status or 0
    if status in (401, 403):
        return _key_cause(probe, api_key)
    if status == 404:
        return _not_found_cause(probe, endpoint, model)
    if status == 400 and API_VERSION.search(probe.message):
        return ("the upstream refused the API version (%s); fix api-version in AZURE_ENDPOINT: a deployment URL "
                "needs one its resource supports (?api-version=2024-10-21), the v1 API (.../openai/v1) needs none"
                % _said(probe))
    if status == 429:
        return ("the upstream is limiting requests (%s); the endpoint and key work: check again later, or raise the "
                "rate limit or quota (the proxy retries 429s)" % _said(probe))
    if status >= 500:
        return ("the upstream failed (%s); it is reachable but failing now: check again later (the proxy retries "
                "this)" % _said(probe))
    if status == 200:
        return ("the upstream answered with JSON, not a stream; clients such as Codex need a stream: check that "
                "AZURE_ENDPOINT is an OpenAI-compatible API that streams")
    return "the upstream refused the check's request (%s); the message says what it wants (often another model: %s)" % (
        _said(probe), MODEL_FIX)


def for_endpoint(text: str, endpoint: Endpoint) -> str:
    """``text``, written for the primary (as upstream.py's details are too), naming ``endpoint``'s own settings."""
    if not endpoint.number:
        return text
    return PRIMARY_SETTING.sub(lambda found: endpoint.setting(PRIMARY_NAMES[found.group(1)]), text)


def cause(probe: Probe, endpoint: Endpoint, model: str) -> str:
    """The likely cause of a failed probe and its fix, as one line: "cause; fix", naming the endpoint's settings."""
    return for_endpoint(_cause(probe, endpoint.url, endpoint.api_key, model), endpoint)


def _cause(probe: Probe, endpoint: str, api_key: str, model: str) -> str:
    where = _where(endpoint)
    detail = probe.detail
    if probe.kind == "dns":
        return ("cannot resolve %s; check the host name in AZURE_ENDPOINT (a typo, or a resource that does not "
                "exist)" % urllib.parse.urlsplit(endpoint).hostname)
    if probe.kind == "connect" and "refused" in detail.lower():
        return ("nothing listens on %s (connection refused); check the host and port in AZURE_ENDPOINT, and that "
                "the upstream server is running" % where)
    if probe.kind == "connect" and detail.startswith("TLS"):
        return ("%s with %s; check the host and port in AZURE_ENDPOINT, or, behind a company proxy, set SSL_CERT_FILE "
                "to a CA bundle that holds its certificate" % (detail, where))
    if probe.kind == "connect":
        return "cannot connect to %s (%s); check the host and port in AZURE_ENDPOINT, and this machine's network" % (
            where, detail.replace("cannot connect: ", ""))
    if probe.kind == "timeout":
        return ("%s did not answer in time (%s); check the host and port in AZURE_ENDPOINT (a firewall may drop the "
                "connection), or raise CONNECT_TIMEOUT and UPSTREAM_TIMEOUT for a slow upstream" % (where, detail))
    if probe.kind == "reset":
        return ("%s closed the connection without an answer (%s); check the scheme and port in AZURE_ENDPOINT "
                "(some servers close a plain http:// request to their TLS port so), else check again (the proxy "
                "retries this)" % (where, detail))
    if probe.kind in ("tls", "wrong_api", "too_large"):
        return detail  # already a cause and its fix
    if probe.kind in ("cut", "unterminated"):
        return ("the stream did not end properly (%s); the upstream or something in between (a company proxy, a "
                "gateway) cut it: check again, and if it keeps happening, look at what stands between (the proxy "
                "retries cut streams)" % detail)
    if probe.kind in ("stream_error", "json_error"):
        return "the upstream sent an error instead of an answer (%s); check again later (the proxy retries this)" % (
            detail)
    if probe.verdict is not None and probe.verdict.outcome == StreamVerdict.FAILED:
        error = probe.verdict.error or {}
        if error.get("code") == "invalid_api_key":
            return _key_cause(probe._replace(status=401, message=error_text(error)), api_key)
        if error.get("code") == "model_not_found":
            return "the upstream has no model %s (%s); %s" % (model, error_text(error), MODEL_FIX)
        return "the upstream ended the answer with an error (%s); the message says what to change" % error_text(error)
    if probe.verdict is not None:
        return "the stream did not end properly (%s); check again (the proxy retries this)" % probe.verdict.detail
    if probe.status is not None:
        return _status_cause(probe, endpoint, api_key, model)
    return "%s; check AZURE_ENDPOINT, then check again" % detail


def api_advice(endpoint: Endpoint, probes: List[Probe]) -> Tuple[bool, Optional[str]]:
    """Whether the proxy would work, and the line on which APIs the endpoint speaks (None: a probe's cause says it)."""
    ok, advice = _api_advice(endpoint.url, endpoint.upstream_api, probes)
    return ok, None if advice is None else for_endpoint(advice, endpoint)


def _api_advice(endpoint: str, upstream_api: str, probes: List[Probe]) -> Tuple[bool, Optional[str]]:
    named = operation_url_protocol(endpoint)
    working = {probe.protocol for probe in probes if works(probe)}
    if named is not None:
        if named not in working:
            return False, None
        other = "chat" if named == "responses" else "responses"
        return True, "%s (the URL names it); %s requests are translated to it, so UPSTREAM_API=auto is enough" % (
            API_NAMES[named], REQUESTS[other])
    if len(working) == 2:
        if upstream_api == "auto":
            return True, "both APIs; UPSTREAM_API=auto is right: each client's requests go as they are"
        return True, ("both APIs; UPSTREAM_API=%s works, and UPSTREAM_API=auto would send each client's requests as "
                      "they are, untranslated" % upstream_api)
    if not working:
        return False, None
    only = working.pop()
    other = "chat" if only == "responses" else "responses"
    other_refuted = any(refuted(probe) for probe in probes if probe.protocol == other)
    if upstream_api == other:
        if not other_refuted:
            return False, None
        return False, ("the upstream speaks only %s, but UPSTREAM_API=%s sends every request as %s; set "
                       "UPSTREAM_API=%s" % (API_NAMES[only], other, API_NAMES[other], only))
    if not other_refuted:
        return True, "%s; %s did not answer properly (see above)" % (API_NAMES[only], API_NAMES[other])
    if upstream_api == only:
        return True, "%s only; UPSTREAM_API=%s is right" % (API_NAMES[only], only)
    if only == "chat":
        return True, ("Chat Completions only; set UPSTREAM_API=chat, so that Codex's Responses requests are "
                      "translated (with auto they get a 502 that says so)")
    return True, ("the Responses API only; Codex works as it is, and UPSTREAM_API=responses would translate "
                  "Chat Completions clients' requests too")


def failure_line(endpoint: Endpoint, model: str, probes: List[Probe]) -> str:
    """The one line on why the endpoint failed: the cause of the probe that matters most."""
    named = operation_url_protocol(endpoint.url)
    wanted = named or (endpoint.upstream_api if endpoint.upstream_api != "auto" else None)
    candidates = [probe for probe in probes if not works(probe) and (wanted is None or probe.protocol == wanted)]
    if candidates and all(refuted(probe) for probe in candidates) and len(candidates) > 1:
        return for_endpoint("the upstream has neither %s nor %s (HTTP 404); check the path in AZURE_ENDPOINT: a base "
                            "URL such as https://NAME.openai.azure.com/openai/v1 or https://api.openai.com/v1" % tuple(
                                urllib.parse.urlsplit(probe.url).path for probe in candidates), endpoint)
    chosen = next((probe for probe in candidates if not refuted(probe)), candidates[0] if candidates else probes[0])
    return cause(chosen, endpoint, model)


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
