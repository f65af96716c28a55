"""One failure model for every store request: what went wrong, whether it is
temporary, the retry wrapper, and the one-line StoreError a user sees.

`failure_of(exc)` reduces an httpx exception or response, an obstore exception
or a timeout to a `Failure` (status, S3 error code, transport cause), from typed
errors wherever they exist: httpx's exception classes, obstore's exception
classes (NotFound, PermissionDenied, Unauthenticated, Precondition), the
ssl.SSLCertVerificationError under a failed handshake. obstore's GenericError
carries no status, code or cause as data, so for it alone its text is read
(never shown). `Failure.temporary` is decided here and nowhere else, and
`retrying()` is the one retry loop: S3Api (httpx) and every obstore call of
S3Store go through it, so both clients retry the same failures the same way,
timeouts included.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

import httpx
import obstore.exceptions as obx

from pailfs.credentials import CredentialSource, CredentialsExpired
from pailfs.errors import (AccessDenied, BadCredentials, NoSuchBucket, NotFound, PreconditionFailed,
                           StoreError, StoreUnavailable)

log = logging.getLogger(__name__)
T = TypeVar("T")

# --- the tables ----------------------------------------------------------------------
# S3 error code (from the XML body) -> domain error; consulted first.
ERROR_CODE_TO_EXCEPTION: dict[str, type[StoreError]] = {
    "NoSuchKey": NotFound,
    "NotFound": NotFound,
    "NoSuchBucket": NoSuchBucket,
    "AccessDenied": AccessDenied,
    "AllAccessDisabled": AccessDenied,
    "SignatureDoesNotMatch": AccessDenied,
    "InvalidAccessKeyId": AccessDenied,
    "InvalidSecurity": AccessDenied,
    "InvalidToken": AccessDenied,
    "ExpiredToken": AccessDenied,
    "TokenRefreshRequired": AccessDenied,
    "PreconditionFailed": PreconditionFailed,
    "SlowDown": StoreUnavailable,
    "ServiceUnavailable": StoreUnavailable,
    "RequestTimeout": StoreUnavailable,
}
# HTTP status -> domain error, when the body has no (known) code (HEAD has no body).
STATUS_TO_EXCEPTION: dict[int, type[StoreError]] = {
    401: AccessDenied,
    403: AccessDenied,
    404: NotFound,
    412: PreconditionFailed,
    502: StoreUnavailable,
    503: StoreUnavailable,
    504: StoreUnavailable,
}
# obstore exception class -> the HTTP status it stands for
_OBSTORE_STATUS: dict[type[BaseException], int] = {
    FileNotFoundError: 404,
    obx.NotFoundError: 404,
    obx.PermissionDeniedError: 403,
    obx.UnauthenticatedError: 401,
    obx.PreconditionError: 412,
}
# What may succeed if asked again: the server was busy or broke, or the connection did.
TEMPORARY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
TEMPORARY_CODES = frozenset({"SlowDown", "ServiceUnavailable", "RequestTimeout", "InternalError",
                             "RequestTimeTooSkewed"})
# The store refused credentials that a refreshing source can replace: fetch new ones, once.
STALE_CREDENTIAL_CODES = frozenset({"ExpiredToken", "InvalidToken", "TokenRefreshRequired",
                                    "InvalidAccessKeyId"})
TEMPORARY_TRANSPORT = frozenset({"timed out", "connection refused", "connection failed",
                                 "connection broken mid-transfer"})

# obstore's GenericError text: read only where no typed information exists
_STATUS_RE = re.compile(r"status code: (\d{3})")
_CODE_RE = re.compile(r"<Code>([A-Za-z]+)</Code>")
_TIMEOUT_RE = re.compile(r"kind: Timeout\b|TimedOut|operation timed out|timed out")
_TLS_NAME_RE = re.compile(r"NotValidForName|certificate is not valid for|hostname mismatch", re.I)
_TLS_CA_RE = re.compile(r"UnknownIssuer|unable to get local issuer|self.signed|certificate verify failed|"
                        r"invalid peer certificate", re.I)


@dataclass(frozen=True)
class Failure:
    """What went wrong, reduced to what the tables need (never provider text)."""

    status: int | None = None
    code: str | None = None
    transport: str | None = None  # "timed out", "connection refused", "TLS: ..."

    @property
    def temporary(self) -> bool:
        """May succeed if asked again (the one place that decides)."""
        return (self.status in TEMPORARY_STATUS or self.code in TEMPORARY_CODES
                or self.transport in TEMPORARY_TRANSPORT)

    @property
    def exception_class(self) -> type[StoreError]:
        if self.code in ERROR_CODE_TO_EXCEPTION:
            return ERROR_CODE_TO_EXCEPTION[self.code]
        if self.status in STATUS_TO_EXCEPTION:
            return STATUS_TO_EXCEPTION[self.status]
        if self.transport:
            return StoreUnavailable
        return StoreError

    @property
    def detail(self) -> str:
        return self.code or (f"HTTP {self.status}" if self.status else self.transport or "error")


# What a request through S3Api may raise (after its retries), besides a StoreError.
REQUEST_ERRORS = (httpx.HTTPError, TimeoutError)


class TemporaryResponse(Exception):
    """An HTTP answer that asks for a retry (5xx, SlowDown); carries the response."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def _caused_by(exc: BaseException, cls: type[BaseException]) -> BaseException | None:
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return None
        if isinstance(seen, cls):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _tls_failure(exc: BaseException) -> Failure | None:
    verify = _caused_by(exc, ssl.SSLCertVerificationError)
    if verify is not None:
        message = (getattr(verify, "verify_message", "") or "").lower()
        if "hostname mismatch" in message or "ip address mismatch" in message:
            return Failure(transport="TLS: the certificate does not name this host")
        return Failure(transport=f"TLS: certificate not trusted ({message or 'verify failed'})")
    if _caused_by(exc, ssl.SSLError) is not None:
        return Failure(transport="TLS: handshake failed")
    return None


def failure_of(exc: BaseException | httpx.Response) -> Failure:
    """Classify an httpx response or exception, an obstore exception or a timeout."""
    if isinstance(exc, TemporaryResponse):
        exc = exc.response
    if isinstance(exc, httpx.Response):
        code = _CODE_RE.search(exc.text) if exc.content else None
        return Failure(exc.status_code, code.group(1) if code else None)
    if isinstance(exc, (httpx.TimeoutException, asyncio.TimeoutError, TimeoutError)):
        return Failure(transport="timed out")
    if isinstance(exc, httpx.TransportError):
        tls = _tls_failure(exc)
        if tls is not None:
            return tls
        if isinstance(exc, httpx.ConnectError) and _caused_by(exc, ConnectionRefusedError):
            return Failure(transport="connection refused")
        if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
            return Failure(transport="connection broken mid-transfer")
        return Failure(transport="connection failed")
    # obstore: the exception class where it says something; its text (never shown) only
    # for what no class carries: the status of a GenericError, the S3 error code, the cause
    status = next((s for cls, s in _OBSTORE_STATUS.items() if isinstance(exc, cls)), None)
    text = str(exc)
    if status is None:
        found = _STATUS_RE.search(text)
        status = int(found.group(1)) if found else None
    code = _CODE_RE.search(text)
    transport = None
    if status is None:
        if _TLS_NAME_RE.search(text):
            transport = "TLS: the certificate does not name this host"
        elif _TLS_CA_RE.search(text):
            transport = "TLS: certificate not trusted (unknown CA)"
        elif _TIMEOUT_RE.search(text):
            transport = "timed out"
        elif "ConnectionRefused" in text or "Connection refused" in text:
            transport = "connection refused"
        elif "kind: Connect" in text or "error sending request" in text or "dns error" in text.lower():
            transport = "connection failed"
        elif "kind: Interrupted" in text or "body error" in text or "IncompleteMessage" in text:
            transport = "connection broken mid-transfer"
    return Failure(status, code.group(1) if code else None, transport)


# --- the message a user sees ----------------------------------------------------------------
# Message per domain error; fields: op, where, bucket, endpoint, detail, hint.
_MESSAGES: dict[type[StoreError], str] = {
    NotFound: "{op} {where}: no such key",
    NoSuchBucket: "{op} {where}: no such bucket '{bucket}' at {endpoint}",
    AccessDenied: "{op} {where}: access denied by {endpoint} ({detail}); check the access key and secret{hint}",
    StoreUnavailable: "{op} {where}: cannot reach {endpoint} ({detail})",
    PreconditionFailed: "{op} {where}: the object changed during the operation",
    StoreError: "{op} {where}: {detail} from {endpoint}",
}
_TLS_HINT = "; pass -o ca_file=FILE (or set AWS_CA_BUNDLE) if the endpoint uses a private CA"


def translate(failure: Failure, op: str, where: str, bucket: str, endpoint: str,
              credentials: CredentialSource | None) -> StoreError:
    cls = failure.exception_class
    if credentials is None:
        hint = " (no credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or -o passwd_file=FILE)"
    else:
        hint = f" (from {credentials.source})" if credentials.source else ""
    if failure.transport and failure.transport.startswith("TLS: "):
        # not "cannot reach": the server answered, and its certificate was refused
        text = f"{op} {where}: {endpoint} failed the TLS check: {failure.transport[5:]}"
        if "not trusted" in failure.transport:
            text += _TLS_HINT
        return cls(text)
    text = _MESSAGES[cls].format(op=op, where=where, bucket=bucket, endpoint=endpoint,
                                 detail=failure.detail, hint=hint)
    return cls(text)


# --- the retry wrapper ------------------------------------------------------------------------
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 2.0


async def retrying(attempt: Callable[[], Awaitable[T]], retries: int, window: float,
                   credentials: CredentialSource | None = None, what: str = "request") -> T:
    """Run attempt() until it succeeds or fails for good. A temporary failure (5xx,
    SlowDown, a refused, broken or timed-out connection) is retried with exponential
    backoff, at most `retries` times, and not once `window` seconds (readwrite_timeout)
    have passed since the first attempt: a request that already took the whole
    timeout is not sent again (obstore's retry_timeout, now the rule of both clients).
    Before each attempt, temporary credentials are refreshed when due; a refusal
    that new credentials can cure (ExpiredToken...) fetches them and tries once
    more, outside the retry budget."""
    started = time.monotonic()
    tries = 0
    refetched = False
    while True:
        if credentials is not None and credentials.refreshable:
            await credentials.fresh()
        try:
            return await attempt()
        except (CredentialsExpired, BadCredentials):
            raise
        except Exception as exc:  # noqa: BLE001 - classified below; the caller translates
            failure = failure_of(exc)
            if (failure.code in STALE_CREDENTIAL_CODES and credentials is not None
                    and credentials.refreshable and not refetched):
                refetched = True
                log.info("%s: the store refused the credentials from %s (%s); fetching new ones",
                         what, credentials.source, failure.code)
                credentials.invalidate()
                continue
            pause = min(BACKOFF_FIRST * 2 ** tries, BACKOFF_MAX)
            if not failure.temporary or tries >= retries or time.monotonic() - started + pause >= window:
                raise
            log.debug("%s: %s, retrying", what, failure.detail)
        await asyncio.sleep(pause)
        tries += 1
