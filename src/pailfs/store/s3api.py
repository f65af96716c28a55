"""A small signed S3 REST client for the calls obstore does not make.

obstore (Rust object_store) normalises keys (it drops a trailing '/', so it
cannot write or list directory markers faithfully) and has no bucket-level
calls. This client covers exactly those: bucket create/delete/versioning,
raw ListObjectsV2, PUT/HEAD of keys obstore cannot spell, multipart upload
listing and abort, and object versions. It addresses buckets, verifies TLS
and signs (with a session token when there is one) exactly as S3Store
configures obstore, and retries through store.failure.retrying.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import xml.etree.ElementTree as ET

import httpx

from pailfs.config import Options, parse_options
from pailfs.credentials import Credentials, CredentialSource, tls_context
from pailfs.store.endpoint import Endpoint, endpoint_of, parse_endpoint
from pailfs.store.failure import REQUEST_ERRORS, TemporaryResponse, failure_of, retrying, translate
from pailfs.store.listxml import NS as _NS, iso_date
from pailfs.store.sigv4 import EMPTY_SHA256, sign_headers, uri_encode

__all__ = ["Credentials", "S3Api"]

log = logging.getLogger(__name__)


class S3Api:
    """Signed requests against one endpoint (path-style or virtual-hosted)."""

    def __init__(self, endpoint: Endpoint | str, credentials: CredentialSource | None,
                 region: str | None = None, *, connect_timeout: float = 10.0, timeout: float = 60.0,
                 max_connections: int = 64, retries: int = 0, ca_file: str | None = None,
                 verify: ssl.SSLContext | None = None) -> None:
        if isinstance(endpoint, str):
            endpoint = parse_endpoint(endpoint, "path", region)
        self.endpoint = endpoint
        self.credentials = credentials
        self.region = region or endpoint.region
        self.retries = retries
        self.timeout = timeout
        if endpoint.scheme == "https":
            tls: ssl.SSLContext | bool = verify or tls_context(ca_file)
        else:
            tls = False  # plain http needs no CA bundle; loading it costs ~50 ms per client
        self._client = httpx.AsyncClient(
            # httpx's read timeout is per socket read; the attempt as a whole gets
            # `timeout` too (below), like an obstore request
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=max_connections),
            follow_redirects=False,
            verify=tls,
        )

    @property
    def virtual_hosted(self) -> bool:
        return self.endpoint.virtual_hosted

    def _target(self, bucket: str, key: str) -> tuple[str, str]:
        path_key = "/" + uri_encode(key, keep_slash=True) if key else "/"
        if not bucket:
            return self.endpoint.netloc, "/"
        if self.endpoint.virtual_hosted:
            return self.endpoint.bucket_host(bucket), path_key
        return self.endpoint.netloc, f"/{uri_encode(bucket, False)}" + (path_key if key else "/")

    async def request(self, method: str, bucket: str = "", key: str = "", *,
                      query: dict[str, str] | None = None, headers: dict[str, str] | None = None,
                      body: bytes = b"") -> httpx.Response:
        """One signed request, retried by store.failure.retrying (temporary failures, with
        backoff). A 5xx answer that stays after the retries is returned; transport
        failures and timeouts (after the retries) raise."""

        async def attempt() -> httpx.Response:
            async with asyncio.timeout(self.timeout):
                resp = await self._send(method, bucket, key, query, headers, body)
            if failure_of(resp).temporary:
                raise TemporaryResponse(resp)
            return resp

        try:
            return await retrying(attempt, self.retries, self.timeout, self.credentials, f"{method} {bucket}/{key}")
        except TemporaryResponse as last:
            return last.response

    async def _send(self, method: str, bucket: str, key: str, query: dict[str, str] | None,
                    headers: dict[str, str] | None, body: bytes) -> httpx.Response:
        query = query or {}
        host, path = self._target(bucket, key)
        payload_hash = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
        hdrs = dict(headers or {})
        if self.credentials is not None:
            creds = self.credentials.current()
            if creds.token:
                hdrs["x-amz-security-token"] = creds.token
            hdrs = sign_headers(method, host, path, query, hdrs, payload_hash,
                                creds.access_key, creds.secret_key, self.region)
        qs = "&".join(f"{uri_encode(k, False)}={uri_encode(v, False)}" for k, v in sorted(query.items()))
        url = f"{self.endpoint.scheme}://{host}{path}" + (f"?{qs}" if qs else "")
        return await self._client.request(method, url, headers=hdrs, content=body or None)

    async def create_bucket(self, bucket: str) -> httpx.Response:
        return await self.request("PUT", bucket)

    async def delete_bucket(self, bucket: str) -> httpx.Response:
        return await self.request("DELETE", bucket)

    async def aclose(self) -> None:
        await self._client.aclose()


async def list_buckets(endpoint: str, credentials: CredentialSource | None,
                       options: Options | None = None) -> list[tuple[str, float]]:
    """(name, creation time) of every bucket the credentials can see."""
    opts = options or parse_options(env={})
    address = endpoint_of(opts, endpoint)
    endpoint = address.url
    api = S3Api(address, credentials, connect_timeout=opts.connect_timeout, timeout=opts.readwrite_timeout,
                retries=opts.retries, ca_file=opts.values.get("ca_file"))
    try:
        try:
            resp = await api.request("GET")
        except REQUEST_ERRORS as exc:
            raise translate(failure_of(exc), "list buckets", "s3://", "", endpoint, credentials) from None
        if resp.status_code != 200:
            raise translate(failure_of(resp), "list buckets", "s3://", "", endpoint, credentials)
        root = ET.fromstring(resp.content)
        return [(b.findtext(_NS + "Name") or "", iso_date(b.findtext(_NS + "CreationDate")))
                for b in root.iter(_NS + "Bucket")]
    finally:
        await api.aclose()
