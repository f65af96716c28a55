"""AWS Signature V4 for the few S3 calls obstore does not make (bucket create/delete,
versioning, dir markers, raw LIST). Data transfers go through obstore."""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
from urllib.parse import quote

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def uri_encode(text: str, keep_slash: bool) -> str:
    return quote(text, safe="-_.~" + ("/" if keep_slash else ""))


def sign_headers(method: str, host: str, path: str, query: dict[str, str], headers: dict[str, str],
                 payload_sha256: str, access_key: str, secret_key: str, region: str,
                 now: _dt.datetime | None = None, service: str = "s3") -> dict[str, str]:
    """Return headers (including Authorization) for a SigV4-signed request.

    `path` is already URI-encoded (each segment); `query` holds raw values.
    """
    now = now or _dt.datetime.now(_dt.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    all_headers = {k.lower(): v.strip() for k, v in headers.items()}
    all_headers["host"] = host
    all_headers["x-amz-date"] = amz_date
    all_headers["x-amz-content-sha256"] = payload_sha256
    signed = sorted(all_headers)
    canonical_query = "&".join(
        f"{uri_encode(k, False)}={uri_encode(v, False)}" for k, v in sorted(query.items()))
    canonical = "\n".join([
        method, path or "/", canonical_query,
        "".join(f"{k}:{all_headers[k]}\n" for k in signed),
        ";".join(signed), payload_sha256,
    ])
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(("AWS4" + secret_key).encode(), day), region), service), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    all_headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
        f"SignedHeaders={';'.join(signed)}, Signature={signature}")
    del all_headers["host"]
    return all_headers
