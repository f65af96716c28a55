"""A FaultProxy that adds keys to LIST answers.

SeaweedFS will not store keys such as `.`, `..`, `./x` or `a//b` (its HTTP
layer normalises the path), but other S3 servers do, and a mount must survive
a listing that names them. This proxy forwards every request unchanged and
appends the given keys to each ListObjectsV2 answer whose prefix they fall
under, rolled up at the delimiter as a server would (first page only):

    with ListProxy(seaweed.state().s3_port, ["..", "./x", "sub/.."]) as proxy:
        env = proxy.env()   # PAILFS_ENDPOINT points at the proxy
"""

from __future__ import annotations

from typing import Callable
from urllib.parse import parse_qs, quote, urlsplit

from faultproxy import FaultProxy


class ListProxy(FaultProxy):
    thread_name = "listproxy"

    def __init__(self, upstream_port: int, extra_keys: list[str], size: int = 5) -> None:
        super().__init__(upstream_port)
        self.extra_keys = list(extra_keys)
        self.size = size
        self.injected = 0  # LIST answers that got extra entries

    def rewrite(self, method: str, target: str, status: int) -> Callable[[bytes], bytes] | None:
        extra = self._extra_xml(target) if method == "GET" and status == 200 else b""
        if not extra:
            return None

        def add(body: bytes) -> bytes:
            self.injected += 1
            return body.replace(b"</ListBucketResult>", extra + b"</ListBucketResult>")

        return add

    def _extra_xml(self, target: str) -> bytes:
        query = parse_qs(urlsplit(target).query, keep_blank_values=True)
        if "list-type" not in query or "continuation-token" in query:
            return b""
        prefix = query.get("prefix", [""])[0]
        delimiter = query.get("delimiter", [""])[0]
        objects, prefixes = [], set()
        for key in self.extra_keys:
            if not key.startswith(prefix):
                continue
            rest = key[len(prefix):]
            if delimiter and delimiter in rest:
                prefixes.add(prefix + rest.split(delimiter, 1)[0] + delimiter)
            else:
                objects.append(key)
        xml = "".join(f"<Contents><Key>{quote(k, safe='')}</Key><LastModified>2024-01-02T03:04:05.000Z"
                      f"</LastModified><ETag>&quot;0123456789abcdef0123456789abcdef&quot;</ETag>"
                      f"<Size>{self.size}</Size><StorageClass>STANDARD</StorageClass></Contents>" for k in objects)
        xml += "".join(f"<CommonPrefixes><Prefix>{quote(p, safe='')}</Prefix></CommonPrefixes>"
                       for p in sorted(prefixes))
        return xml.encode()
