"""A fault-injecting HTTP/1.1 proxy on 127.0.0.1 in front of the real S3 port.

It speaks just enough HTTP/1.1 to see every request of a keep-alive
connection (request line, headers, a Content-Length or chunked body), so a
fault switched on mid-test also reaches connections the client already pooled.

    with FaultProxy(seaweed.state().s3_port) as proxy:
        env = {**seaweed.env(), "PAILFS_ENDPOINT": proxy.endpoint}
        proxy.error(503, "SlowDown", times=2, match=GET_OBJECT)   # the next 2 object GETs
        ...
        assert proxy.fired == 2

Modes (one at a time; `times=None` means until the next switch; after `times`
fires the proxy goes back to pass-through):

* pass-through (`passthrough()`);
* `delay(ms)`: wait before forwarding the request;
* `cut_response(after)`: forward the status line, the headers and `after`
  bytes of the body, then close (a download that breaks off);
* `cut_request(after)`: forward the request head and `after` bytes of its
  body to the server, then close both sides (an upload that breaks off);
* `error(status, code)`: answer with an S3 XML error body and
  `Connection: close`, without asking the server;
* `blackhole()`: read the request and never answer.
* `rename_listed(renames)`: LIST answers show the keys of `renames` under other
  names (hostile keys SeaweedFS itself would never store: `..`, `a//b`, ...).

`fired` counts how often the current mode acted; `counts` keeps totals per
mode for the whole life of the proxy; `requests` logs (method, target) and
`request_heads` (method, target, headers).
Killing and restarting SeaweedFS is in `kill9()` / `restart()` below.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pailfs.bench.proxy import LoopbackProxy

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
HEAD_LIMIT = 1 << 20

# (method, target) -> bool
Match = Callable[[str, str], bool]


def ANY(method: str, target: str) -> bool:
    return True


def GET_OBJECT(method: str, target: str) -> bool:
    """A GET of an object (not a LIST, which is a GET of the bucket with list-type=)."""
    return method == "GET" and "list-type=" not in target and target.count("/") >= 2


def LIST(method: str, target: str) -> bool:
    return method == "GET" and "list-type=" in target


def PUT(method: str, target: str) -> bool:
    """An object or part upload (not a copy, which is a PUT without a body; see _body_framing)."""
    return method == "PUT"


def WRITE(method: str, target: str) -> bool:
    return method in ("PUT", "POST")


def key_match(key_part: str, methods: tuple[str, ...] = ("GET", "PUT", "POST", "HEAD")) -> Match:
    """Requests whose target contains key_part (URL-encoded form), e.g. a key name."""
    def match(method: str, target: str) -> bool:
        return method in methods and key_part in target
    return match


@dataclass
class _Mode:
    name: str = "pass"
    times: int | None = None
    match: Match = ANY
    delay: float = 0.0
    after: int = 0
    status: int = 503
    code: str = "SlowDown"
    rewrite: Callable[[bytes], bytes] | None = None


_REASONS = {500: "Internal Server Error", 503: "Slow Down", 502: "Bad Gateway", 404: "Not Found",
            403: "Forbidden", 400: "Bad Request"}


def error_response(status: int, code: str, target: str, with_body: bool = True) -> bytes:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>injected by the fault proxy</Message><Resource>{_xml(target)}</Resource>"
            f"<RequestId>faultproxy</RequestId></Error>").encode()
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            "Content-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\n"
            "x-amz-request-id: faultproxy\r\n"
            "Connection: close\r\n\r\n").encode()
    return head + (body if with_body else b"")


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class _Head:
    """A parsed request or response head."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        lines = raw.decode("latin-1").split("\r\n")
        self.first = lines[0]
        self.headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                self.headers[name.strip().lower()] = value.strip()

    @property
    def chunked(self) -> bool:
        return "chunked" in self.headers.get("transfer-encoding", "").lower()

    @property
    def length(self) -> int | None:
        value = self.headers.get("content-length")
        return int(value) if value is not None else None

    @property
    def close(self) -> bool:
        return self.headers.get("connection", "").lower() == "close"


async def _read_head(reader: asyncio.StreamReader) -> _Head | None:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    return _Head(raw)


class _Cut(Exception):
    """The byte budget of a cut was reached."""


class _Budget:
    """How many more body bytes may be forwarded (None: all of them)."""

    def __init__(self, limit: int | None) -> None:
        self.left = limit

    async def forward(self, writer: asyncio.StreamWriter | None, data: bytes, more: bool = False) -> None:
        """Forward data within the budget; _Cut once bytes had to be held back
        (or the budget is spent and `more` bytes are still to come)."""
        out = data
        if self.left is not None:
            out = data[:self.left]
            self.left -= len(out)
        if writer is not None and out:
            writer.write(out)
            await writer.drain()
        if len(out) < len(data) or (self.left == 0 and more):
            raise _Cut()


async def _copy_exact(reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None, n: int,
                      budget: _Budget) -> None:
    while n > 0:
        data = await reader.read(min(CHUNK, n))
        if not data:
            raise ConnectionError("peer closed mid-body")
        n -= len(data)
        await budget.forward(writer, data, more=n > 0)


async def _copy_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None, head: _Head,
                     has_body: bool, budget: _Budget) -> None:
    """Copy one message body (framing kept as is); `writer=None` discards it."""
    if not has_body:
        return
    if head.chunked:
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";")[0].strip() or b"0", 16)
            await budget.forward(writer, line, more=True)
            if size == 0:
                while True:  # trailers, then the empty line
                    trailer = await reader.readuntil(b"\r\n")
                    await budget.forward(writer, trailer, more=trailer != b"\r\n")
                    if trailer == b"\r\n":
                        return
            await _copy_exact(reader, writer, size + 2, budget)
    elif head.length is not None:
        await _copy_exact(reader, writer, head.length, budget)
    else:  # a response delimited by the end of the connection
        while data := await reader.read(CHUNK):
            await budget.forward(writer, data, more=True)


async def _read_body(reader: asyncio.StreamReader, head: _Head) -> bytes:
    """A whole response body, chunked or of a Content-Length."""
    if not head.chunked:
        return await reader.readexactly(head.length or 0)
    out = b""
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0].strip() or b"0", 16):
        out += (await reader.readexactly(size + 2))[:-2]
    while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
        pass
    return out


def _with_length(head: _Head, length: int) -> bytes:
    """The response head with its body framing replaced by a Content-Length."""
    lines = [line for line in head.raw.decode("latin-1").split("\r\n")[:-2]
             if line.split(":", 1)[0].strip().lower() not in ("content-length", "transfer-encoding")]
    return ("\r\n".join(lines) + f"\r\nContent-Length: {length}\r\n\r\n").encode("latin-1")


def _rename_keys(body: bytes, renames: dict[str, str]) -> bytes:
    """<Key> elements of a ListObjectsV2 answer renamed (URL-encoded or XML text, as the
    answer encodes them)."""
    import re
    from urllib.parse import quote, unquote
    from xml.sax.saxutils import escape, unescape

    encoded = b"<EncodingType>url</EncodingType>" in body

    def swap(match: re.Match) -> bytes:
        text = match.group(1).decode()
        key = unquote(text) if encoded else unescape(text)
        if key not in renames:
            return match.group(0)
        new = quote(renames[key], safe="/") if encoded else escape(renames[key])
        return b"<Key>" + new.encode() + b"</Key>"

    return re.sub(rb"<Key>(.*?)</Key>", swap, body)


def _cut_at(after: int, head: _Head) -> int:
    """Where to cut a body: `after` bytes, or half of a body that is not longer than that."""
    length = head.length
    if length is not None and length <= after:
        return max(1, length // 2)
    return after


class FaultProxy(LoopbackProxy):
    """`with FaultProxy(upstream_port) as proxy:` — see the module docstring."""

    thread_name = "faultproxy"
    stream_limit = HEAD_LIMIT

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1", host: str = "127.0.0.1") -> None:
        super().__init__(upstream_host, upstream_port, host)
        self._lock = threading.Lock()
        self._mode = _Mode()
        self.fired = 0
        self.counts: Counter[str] = Counter()
        self.requests: list[tuple[str, str]] = []
        # (method, target, lower-case headers) of every request, for tests of what clients send
        self.request_heads: list[tuple[str, str, dict[str, str]]] = []

    # --- lifecycle --------------------------------------------------------------
    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """`base` (default os.environ) with PAILFS_ENDPOINT pointing at the proxy."""
        return {**(os.environ if base is None else base), "PAILFS_ENDPOINT": self.endpoint}

    def drop_connections(self) -> None:
        """Close every client connection (so the next request opens a fresh one)."""
        async def drop() -> None:
            for task in list(self._conns):
                task.cancel()
        self.run(drop())

    # --- modes -------------------------------------------------------------------
    def _set(self, mode: _Mode) -> None:
        with self._lock:
            self._mode = mode
            self.fired = 0

    def passthrough(self) -> None:
        self._set(_Mode())

    def delay(self, ms: float, times: int | None = None, match: Match = ANY) -> None:
        self._set(_Mode("delay", times, match, delay=ms / 1000))

    def cut_response(self, after: int = 1000, times: int | None = 1, match: Match = GET_OBJECT) -> None:
        self._set(_Mode("cut_response", times, match, after=after))

    def cut_request(self, after: int = 100_000, times: int | None = 1, match: Match = PUT) -> None:
        self._set(_Mode("cut_request", times, match, after=after))

    def error(self, status: int = 503, code: str = "SlowDown", times: int | None = 1, match: Match = ANY) -> None:
        self._set(_Mode("error", times, match, status=status, code=code))

    def blackhole(self, times: int | None = None, match: Match = ANY) -> None:
        self._set(_Mode("blackhole", times, match))

    def rename_listed(self, renames: dict[str, str], times: int | None = None) -> None:
        """LIST responses name each key of `renames` (a full key in the bucket) by its value."""
        self._set(_Mode("rewrite", times, LIST, rewrite=lambda body: _rename_keys(body, renames)))

    def _take(self, method: str, target: str, has_body: bool) -> _Mode | None:
        """The mode to apply to this request (counted as fired), or None to pass it."""
        with self._lock:
            self.requests.append((method, target))
            mode = self._mode
            if mode.name == "pass" or not mode.match(method, target):
                return None
            if mode.name == "cut_request" and not has_body:
                return None
            if mode.times is not None and self.fired >= mode.times:
                return None
            self.fired += 1
            self.counts[mode.name] += 1
            if mode.times is not None and self.fired >= mode.times:
                self._mode = _Mode()
            return mode

    # --- rewriting answers ------------------------------------------------------------
    def rewrite(self, method: str, target: str, status: int) -> Callable[[bytes], bytes] | None:
        """A subclass's hook: a function applied to the whole body of this answer (None:
        forwarded as it comes). Used only while no fault mode acts on the request."""
        return None

    @staticmethod
    async def _send_rewritten(up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter, resp: "_Head",
                              change: Callable[[bytes], bytes]) -> None:
        sink = _Collect()
        await _copy_body(up_reader, sink, resp, True, _Budget(None))  # type: ignore[arg-type]
        body = change(_dechunk(sink.body()) if resp.chunked else sink.body())
        head = re.sub(rb"(?im)^(content-length|transfer-encoding):[^\r\n]*\r\n", b"", resp.raw)
        writer.write(head[:-2] + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()

    # --- the proxy -----------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                head = await _read_head(reader)
                if head is None:
                    return
                parts = head.first.split(" ")
                method, target = parts[0], parts[1] if len(parts) > 1 else "/"
                body_len = head.length or 0
                has_body = head.chunked or body_len > 0
                self.request_heads.append((method, target, head.headers))
                mode = self._take(method, target, has_body)
                if mode is not None and mode.name == "error":
                    await _copy_body(reader, None, head, has_body, _Budget(None))
                    writer.write(error_response(mode.status, mode.code, target, with_body=method != "HEAD"))
                    await writer.drain()
                    return
                if mode is not None and mode.name == "blackhole":
                    await _copy_body(reader, None, head, has_body, _Budget(None))
                    while await reader.read(CHUNK):  # until the client gives up
                        pass
                    return
                if mode is not None and mode.name == "delay":
                    await asyncio.sleep(mode.delay)
                if upstream is None:
                    try:
                        upstream = await asyncio.open_connection(*self.upstream, limit=HEAD_LIMIT)
                    except OSError:
                        return  # the server is down: the client sees the connection close
                up_reader, up_writer = upstream
                # the request
                up_writer.write(head.raw)
                budget = _Budget(None)
                if mode is not None and mode.name == "cut_request":
                    budget = _Budget(_cut_at(mode.after, head))
                try:
                    await _copy_body(reader, up_writer, head, has_body, budget)
                except _Cut:
                    up_writer.close()
                    return
                # the response
                resp = await _read_head(up_reader)
                if resp is None:
                    return
                status = int(resp.first.split(" ")[1])
                resp_has_body = method != "HEAD" and status not in (204, 304) and not 100 <= status < 200
                if mode is not None and mode.name == "rewrite" and resp_has_body:
                    body = mode.rewrite(await _read_body(up_reader, resp))  # type: ignore[misc]
                    writer.write(_with_length(resp, len(body)) + body)
                    await writer.drain()
                    if resp.close or head.close:
                        return
                    continue
                change = self.rewrite(method, target, status) if mode is None and resp_has_body else None
                if change is not None:
                    await self._send_rewritten(up_reader, writer, resp, change)
                    if resp.close or head.close:
                        return
                    continue
                writer.write(resp.raw)
                budget = _Budget(_cut_at(mode.after, resp) if mode is not None and mode.name == "cut_response"
                                 and resp_has_body else None)
                try:
                    await _copy_body(up_reader, writer, resp, resp_has_body, budget)
                except _Cut:
                    up_writer.close()
                    return
                await writer.drain()
                if resp.close or head.close or (resp_has_body and not resp.chunked and resp.length is None):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            return
        except asyncio.CancelledError:
            return
        finally:
            if upstream is not None:
                upstream[1].close()
            writer.close()
            self._conns.discard(task)


class _Collect:
    """A StreamWriter stand-in that keeps what is written to it."""

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


# --- SeaweedFS: kill -9 and restart on the same port ------------------------------
def kill9(server) -> None:
    """SIGKILL the SeaweedFS process group of `server` (a pailfs.server.SeaweedServer)."""
    state = server.state()
    assert state is not None, "the server is not running"
    with contextlib.suppress(ProcessLookupError):
        os.killpg(state.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    proc = getattr(server, "_proc", None)
    while time.monotonic() < deadline:
        if proc is not None and proc.pid == state.pid:
            proc.poll()
        if server.state() is None:
            return
        time.sleep(0.05)
    raise AssertionError(f"SeaweedFS pid {state.pid} survived SIGKILL")


def restart(data_dir: str | Path, s3_port: int):
    """Start SeaweedFS again on the same data dir and S3 port; returns the new server."""
    from pailfs.server import SeaweedServer

    srv = SeaweedServer(data_dir, s3_port=s3_port)
    srv.start()
    return srv
