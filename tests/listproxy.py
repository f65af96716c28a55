"""An HTTP proxy in front of the real S3 port that adds keys to LIST answers.

SeaweedFS will not store keys such as `.`, `..`, `./x` or `a//b` (its HTTP
layer normalises the path), but other S3 servers do, and a mount must survive
a listing that names them. This proxy forwards every request unchanged and
appends the given keys to each ListObjectsV2 answer whose prefix they fall
under, rolled up at the delimiter as a server would (first page only):

    with ListProxy(seaweed.state().s3_port, ["..", "./x", "sub/.."]) as proxy:
        env = proxy.env()   # PAILFS_ENDPOINT points at the proxy
"""

from __future__ import annotations

import asyncio
import os
import re
from urllib.parse import parse_qs, quote, urlsplit

from faultproxy import HEAD_LIMIT, _Budget, _copy_body, _read_head
from pailfs.bench.proxy import LoopbackProxy

_LENGTH = re.compile(rb"(?im)^content-length:[^\r\n]*\r\n")
_CHUNKED = re.compile(rb"(?im)^transfer-encoding:[^\r\n]*\r\n")


class ListProxy(LoopbackProxy):
    thread_name = "listproxy"
    stream_limit = HEAD_LIMIT

    def __init__(self, upstream_port: int, extra_keys: list[str], size: int = 5) -> None:
        super().__init__("127.0.0.1", upstream_port)
        self.extra_keys = list(extra_keys)
        self.size = size
        self.injected = 0  # LIST answers that got extra entries

    def env(self) -> dict[str, str]:
        return {**os.environ, "PAILFS_ENDPOINT": self.endpoint}

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

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        upstream = None
        try:
            while True:
                head = await _read_head(reader)
                if head is None:
                    return
                method, target = (head.first.split(" ") + ["/"])[:2]
                has_body = head.chunked or (head.length or 0) > 0
                if upstream is None:
                    upstream = await asyncio.open_connection(*self.upstream, limit=HEAD_LIMIT)
                up_reader, up_writer = upstream
                up_writer.write(head.raw)
                await _copy_body(reader, up_writer, head, has_body, _Budget(None))
                resp = await _read_head(up_reader)
                if resp is None:
                    return
                status = int(resp.first.split(" ")[1])
                resp_has_body = method != "HEAD" and status not in (204, 304)
                extra = self._extra_xml(target) if method == "GET" and status == 200 else b""
                if not extra:
                    writer.write(resp.raw)
                    await _copy_body(up_reader, writer, resp, resp_has_body, _Budget(None))
                else:  # read the whole answer, add the entries, send it with a new length
                    sink = _Collect()
                    await _copy_body(up_reader, sink, resp, resp_has_body, _Budget(None))  # type: ignore[arg-type]
                    body = sink.body()
                    if resp.chunked:
                        body = _dechunk(body)
                    body = body.replace(b"</ListBucketResult>", extra + b"</ListBucketResult>")
                    raw = _CHUNKED.sub(b"", _LENGTH.sub(b"", resp.raw))
                    raw = raw[:-2] + b"Content-Length: %d\r\n\r\n" % len(body)
                    writer.write(raw + body)
                    self.injected += 1
                await writer.drain()
                if resp.close or head.close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, OSError):
            return
        except asyncio.CancelledError:
            return
        finally:
            if upstream is not None:
                upstream[1].close()
            writer.close()
            self._conns.discard(task)


class _Collect:
    """A StreamWriter stand-in that keeps what is written."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(bytes(data))

    async def drain(self) -> None:
        return None

    def body(self) -> bytes:
        return b"".join(self.parts)


def _dechunk(data: bytes) -> bytes:
    out, pos = [], 0
    while True:
        end = data.index(b"\r\n", pos)
        size = int(data[pos:end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(data[end + 2:end + 2 + size])
        pos = end + 2 + size + 2
