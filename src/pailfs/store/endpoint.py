"""Endpoints as users write them, and how a bucket is addressed on one.

`url=` is `host`, `host:port` or `scheme://host[:port]`; without a scheme it is
https (ossfs and ACK PVs write `oss-cn-hangzhou.aliyuncs.com`).

Addressing `auto`: virtual-hosted (`bucket.host`) on OSS (`*.aliyuncs.com`) and
AWS (`*.amazonaws.com`, `*.amazonaws.com.cn`) hosts, which deny or discourage
path style; path style (`host/bucket`) everywhere else: IP addresses,
`localhost`, and the self-hosted servers (MinIO, SeaweedFS, Ceph) that are
usually reached that way. `addressing=virtual` marks any other host as
virtual-hosted, `addressing=path` forces path style.

The signing region comes from `region=` when given, else from an OSS host
(`oss-cn-hangzhou[-internal].aliyuncs.com`, `s3.oss-cn-hangzhou.aliyuncs.com`
-> `cn-hangzhou`) or an AWS host (`s3.us-west-2.amazonaws.com`,
`s3.dualstack.us-west-2.amazonaws.com` -> `us-west-2`; `s3.amazonaws.com` ->
`us-east-1`), else `us-east-1`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from pailfs.config import Options
from pailfs.errors import BadOption

DEFAULT_REGION = "us-east-1"
ADDRESSING = ("auto", "virtual", "path")
_HOST_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")
_OSS_RE = re.compile(r"(?:^|\.)oss-([a-z]{2}-[a-z0-9-]+?)(?:-internal)?\.aliyuncs\.com$")
_AWS_REGION_RE = re.compile(r"^[a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-\d{1,2}$")


def is_oss_host(host: str) -> bool:
    return host.lower().rstrip(".").endswith(".aliyuncs.com")


def is_aws_host(host: str) -> bool:
    low = host.lower().rstrip(".")
    return low.endswith(".amazonaws.com") or low.endswith(".amazonaws.com.cn")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def region_from_host(host: str) -> str | None:
    """The signing region an OSS or AWS host names, or None."""
    low = host.lower().rstrip(".")
    found = _OSS_RE.search(low)
    if found:
        return found.group(1)
    if is_aws_host(low):
        labels = low.split(".")
        for label in labels:
            for part in (label, label.removeprefix("s3-")):  # legacy s3-us-west-2.amazonaws.com
                if _AWS_REGION_RE.match(part):
                    return part
        if labels[0] == "s3" and low in ("s3.amazonaws.com", "s3-external-1.amazonaws.com"):
            return DEFAULT_REGION
    return None


@dataclass(frozen=True)
class Endpoint:
    """One object-store endpoint: where to connect, how to address a bucket, how to sign."""

    scheme: str  # "http" or "https"
    host: str    # a name, an IPv4 address or a bracketed IPv6 address
    port: int | None
    virtual_hosted: bool
    region: str

    @property
    def netloc(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The endpoint as written in messages and compared between stores."""
        return f"{self.scheme}://{self.netloc}"

    def bucket_url(self, bucket: str) -> str:
        """Where a bucket's objects live: `scheme://bucket.host[:port]` or `scheme://host[:port]/bucket`."""
        if self.virtual_hosted:
            return f"{self.scheme}://{bucket}.{self.netloc}"
        return f"{self.url}/{bucket}"

    def bucket_host(self, bucket: str) -> str:
        """The Host header of a request on `bucket` (netloc of bucket_url without the path)."""
        return f"{bucket}.{self.netloc}" if bucket and self.virtual_hosted else self.netloc


def parse_endpoint(text: str, addressing: str = "auto", region: str | None = None) -> Endpoint:
    """Parse `url=`; BadOption with a one-line reason when it is not an endpoint."""
    raw = (text or "").strip()
    if not raw or any(ord(c) < 0x21 for c in raw):
        raise BadOption(f"bad endpoint {text!r}: expected host[:port] or http(s)://host[:port]")
    with_scheme = raw if "://" in raw else "https://" + raw
    try:
        parts = urlsplit(with_scheme)
        port = parts.port
    except ValueError:
        raise BadOption(f"bad endpoint '{raw}': expected host[:port] or http(s)://host[:port]") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise BadOption(f"bad endpoint '{raw}': the scheme must be http or https "
                        "(or leave it out: https)")
    host = parts.hostname or ""
    if (parts.path.strip("/") or parts.query or parts.fragment or parts.username is not None
            or not host or (not _is_ip(host) and not _HOST_RE.match(host))):
        raise BadOption(f"bad endpoint '{raw}': expected host[:port] or http(s)://host[:port] "
                        "(no path, no user)")
    if port == 0:
        raise BadOption(f"bad endpoint '{raw}': port 0")
    if ":" in host:  # IPv6
        host = f"[{host}]"
    host = host.rstrip(".")
    if addressing not in ADDRESSING:
        raise BadOption(f"bad value for option 'addressing': {addressing!r} (auto, virtual or path)")
    if addressing == "auto":
        virtual = is_oss_host(host) or is_aws_host(host)
    else:
        virtual = addressing == "virtual"
    if virtual and (_is_ip(host) or host.lower() == "localhost"):
        raise BadOption(f"endpoint '{raw}': virtual-hosted addressing needs a host name (bucket.{host} "
                        "cannot resolve); use addressing=path")
    return Endpoint(scheme, host, port, virtual, region or region_from_host(host) or DEFAULT_REGION)


def endpoint_of(options: Options, url: str | None = None) -> Endpoint:
    """The Endpoint that `url` (default: option `url`) names under these options."""
    return parse_endpoint(url or options.url, options.values.get("addressing", "auto"),
                          options.values.get("region"))
