"""Where the benchmark's bucket lives: endpoint, bucket, keys, and clients for it."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from obstore.store import S3Store

from pailfs.errors import BadCredentials

REGION = "us-east-1"


@dataclass(frozen=True)
class Target:
    """An S3 endpoint and bucket with a key pair. repr() never shows the secret."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    region: str = REGION

    def __repr__(self) -> str:
        return f"Target(endpoint={self.endpoint!r}, bucket={self.bucket!r})"

    @classmethod
    def from_env(cls, endpoint: str, bucket: str) -> "Target":
        ak = os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("OSS_ACCESS_KEY_ID")
        sk = os.environ.get("AWS_SECRET_ACCESS_KEY") or os.environ.get("OSS_ACCESS_KEY_SECRET")
        if not ak or not sk:
            raise BadCredentials("--endpoint needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment")
        return cls(endpoint.rstrip("/"), bucket, ak, sk, os.environ.get("AWS_REGION", REGION))

    def via(self, endpoint: str) -> "Target":
        """The same bucket reached through another endpoint (the latency proxy)."""
        return replace(self, endpoint=endpoint)

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.endpoint)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return parts.hostname or "127.0.0.1", port

    def obstore(self, **client_options: object) -> S3Store:
        opts = {"allow_http": True, "timeout": "300s", "pool_max_idle_per_host": "64", **client_options}
        return S3Store(self.bucket, endpoint=self.endpoint, access_key_id=self.access_key,
                       secret_access_key=self.secret_key, region=self.region,
                       virtual_hosted_style_request=False, client_options=opts)

    def env(self) -> dict[str, str]:
        """Variables that point pailfs (mount, Checkpointer) at this target."""
        return {"PAILFS_ENDPOINT": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": self.region}
