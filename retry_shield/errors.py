"""The exceptions that cross module boundaries: bad settings, bad requests, failed attempts, gone clients."""

from typing import Mapping, Optional


class ConfigError(Exception):
    """A setting is missing or malformed; the message is the one line shown to the user."""


class ClientError(Exception):
    """The client's request cannot be served; answered with ``status`` and a JSON error."""

    def __init__(self, status: int, message: str, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


class ClientGone(Exception):
    """The client closed its connection while the proxy was still shielding."""


class UpstreamFailure(Exception):
    """One upstream attempt went wrong.

    ``kind`` names what happened (dns, connect, reset, timeout, status, cut, unterminated,
    stream_error, json_error, too_large, tls, stopping; paced: no attempt, its turn could not
    come within TOTAL_TIMEOUT); ``retryable`` says whether another attempt may succeed;
    ``status``, ``headers`` and ``body`` keep what the upstream said; ``reused`` says the
    attempt went out on a kept-alive connection.
    """

    def __init__(self, kind: str, detail: str, status: Optional[int] = None,
                 headers: Optional[Mapping[str, str]] = None, body: bytes = b"", retryable: bool = True,
                 message: str = "", wait: Optional[float] = None, reused: bool = False) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.status = status
        self.headers = dict(headers or {})
        self.body = body
        self.retryable = retryable
        self.message = message
        self.wait = wait  # the proxy's own wait before the next attempt, over any hint and the backoff
        self.reused = reused

    def told(self, detail: str) -> "UpstreamFailure":
        """The same failure with another ``detail`` (the message naming other settings)."""
        return UpstreamFailure(self.kind, detail, self.status, self.headers, self.body, self.retryable, self.message,
                               self.wait, self.reused)
