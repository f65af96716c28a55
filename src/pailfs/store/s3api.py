"""A small signed S3 REST client for the calls obstore does not make.

obstore (Rust object_store) normalises keys (it drops a trailing '/', so it
cannot write or list directory markers faithfully) and has no bucket-level
calls. This client covers exactly those: bucket create/delete/versioning,
raw ListObjectsV2, PUT/HEAD of keys obstore cannot spell, and object versions.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from pailfs.store.sigv4 import EMPTY_SHA256, sign_headers, uri_encode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str = ""
    # where the pair came from ("env AWS_ACCESS_KEY_ID", a passwd file...), for error hints
    source: str = field(default="", compare=False)

    def __repr__(self) -> str:  # never show the secret
        return f"Credentials(access_key={self.access_key!r}, secret_key='***')"


class S3Api:
    """Signed requests against one endpoint (path-style or virtual-hosted)."""

    def __init__(self, endpoint: str, credentials: Credentials | None, region: str = "us-east-1",
                 virtual_hosted: bool = False, connect_timeout: float = 10.0,
                 timeout: float = 60.0, max_connections: int = 64, retries: int = 0) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"endpoint must be http(s)://host[:port], got {endpoint!r}")
        self.scheme = parts.scheme
        self.netloc = parts.netloc
        self.credentials = credentials
        self.region = region
        self.virtual_hosted = virtual_hosted
        self.retries = retries
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=max_connections),
            follow_redirects=False,
            # plain http needs no CA bundle; loading it costs ~50 ms per client
            verify=self.scheme == "https",
        )

    def _target(self, bucket: str, key: str) -> tuple[str, str]:
        path_key = "/" + uri_encode(key, keep_slash=True) if key else "/"
        if not bucket:
            return self.netloc, "/"
        if self.virtual_hosted:
            return f"{bucket}.{self.netloc}", path_key
        return self.netloc, f"/{uri_encode(bucket, False)}" + (path_key if key else "/")

    async def request(self, method: str, bucket: str = "", key: str = "", *,
                      query: dict[str, str] | None = None, headers: dict[str, str] | None = None,
                      body: bytes = b"") -> httpx.Response:
        """One signed request, retried (with backoff) on dropped connections and 5xx.

        Timeouts are not retried: a silent or unreachable host has already cost
        the full timeout, and retrying would multiply it.
        """
        attempt = 0
        while True:
            try:
                resp = await self._send(method, bucket, key, query, headers, body)
            except httpx.TimeoutException:
                raise
            except httpx.TransportError as exc:
                if attempt >= self.retries:
                    raise
                log.debug("%s %s/%s: %s, retrying", method, bucket, key, type(exc).__name__)
            else:
                if resp.status_code < 500 or attempt >= self.retries:
                    return resp
                log.debug("%s %s/%s: HTTP %d, retrying", method, bucket, key, resp.status_code)
            await asyncio.sleep(min(0.1 * 2 ** attempt, 2.0))
            attempt += 1

    async def _send(self, method: str, bucket: str, key: str, query: dict[str, str] | None,
                    headers: dict[str, str] | None, body: bytes) -> httpx.Response:
        query = query or {}
        host, path = self._target(bucket, key)
        payload_hash = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
        hdrs = dict(headers or {})
        if self.credentials is not None:
            hdrs = sign_headers(method, host, path, query, hdrs, payload_hash,
                                self.credentials.access_key, self.credentials.secret_key, self.region)
        qs = "&".join(f"{uri_encode(k, False)}={uri_encode(v, False)}" for k, v in sorted(query.items()))
        url = f"{self.scheme}://{host}{path}" + (f"?{qs}" if qs else "")
        return await self._client.request(method, url, headers=hdrs, content=body or None)

    async def create_bucket(self, bucket: str) -> httpx.Response:
        return await self.request("PUT", bucket)

    async def delete_bucket(self, bucket: str) -> httpx.Response:
        return await self.request("DELETE", bucket)

    async def aclose(self) -> None:
        await self._client.aclose()
