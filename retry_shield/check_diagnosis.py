"""What a failed ``--check`` request means: its likely cause and fix as one line, and which APIs an endpoint speaks."""

import re
import urllib.parse
from typing import List, NamedTuple, Optional, Tuple

from .endpoints import Endpoint
from .replies import NAMES_A_MODEL, says_no_such_path
from .routes import operation_url_protocol
from .sse import StreamVerdict, error_text

API_NAMES = {"responses": "the Responses API", "chat": "Chat Completions"}
REQUESTS = {"responses": "Responses (Codex)", "chat": "Chat Completions"}
API_VERSION = re.compile(r"api[-_ ]?version", re.IGNORECASE)
MODEL_FIX = ("check with a model it serves: FORCED_MODEL=NAME python proxy.py --check (on Azure NAME is a deployment's "
             "name), then set FORCED_MODEL, or the model in your client, to it")


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


def cause(probe: Probe, endpoint: Endpoint, model: str) -> str:
    """The likely cause of a failed probe and its fix, as one line: "cause; fix", naming the endpoint's settings."""
    return endpoint.in_its_words(_cause(probe, endpoint.url, endpoint.api_key, model))


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
    return ok, None if advice is None else endpoint.in_its_words(advice)


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
        paths = tuple(urllib.parse.urlsplit(probe.url).path for probe in candidates)
        return endpoint.in_its_words(
            "the upstream has neither %s nor %s (HTTP 404); check the path in AZURE_ENDPOINT: a base URL such as "
            "https://NAME.openai.azure.com/openai/v1 or https://api.openai.com/v1" % paths)
    chosen = next((probe for probe in candidates if not refuted(probe)), candidates[0] if candidates else probes[0])
    return cause(chosen, endpoint, model)
