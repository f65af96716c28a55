"""Run as another local user (tests/test_server.py runs it as uid 65534): try to read
or change an object through every port and unix socket the embedded server opened.

Standard library only (the unprivileged user may not be able to read the venv).
Input: one JSON argument {"ports": [...], "sockets": [...], "bucket", "key", "fid",
"marker"}. Output: one JSON line per attempt on stdout:
{"where", "how", "status" (HTTP status or null), "error", "leak" (bool)}.
"leak" means the answer held the object's bytes, a file id or a signed token.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import sys

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS


def requests(bucket: str, key: str, fid: str) -> list[tuple[str, str]]:
    return [
        ("GET", f"/buckets/{bucket}/{key}"), ("GET", f"/buckets/{bucket}/?limit=100"),
        ("GET", f"/{bucket}/{key}"), ("GET", f"/{fid}"), ("GET", f"/{fid}?readDeleted=true"),
        ("GET", f"/dir/lookup?fileId={fid}&read=yes"), ("POST", "/dir/assign"),
        ("PUT", f"/buckets/{bucket}/{key}"), ("POST", f"/buckets/{bucket}/"), ("PUT", f"/{bucket}/{key}"),
        ("POST", f"/{fid}"), ("DELETE", f"/buckets/{bucket}/{key}"), ("DELETE", f"/{bucket}/{key}"),
        ("DELETE", f"/{fid}"), ("GET", f"/col/delete?collection={bucket}"), ("GET", "/vol/status"),
    ]


def leaked(status: int | None, headers: dict, body: bytes, marker: bytes) -> bool:
    auth = headers.get("authorization", "")
    return marker in body or b'"fid"' in body or b"file_id" in body or auth.lower().startswith("bearer")


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=5)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(self.path)


def http_attempts(make_conn, where: str, how: str, args: dict) -> None:
    marker = args["marker"].encode()
    for method, path in requests(args["bucket"], args["key"], args["fid"]):
        record = {"where": where, "how": f"{how} {method} {path}", "status": None, "error": None, "leak": False}
        try:
            conn = make_conn()
            body = b"pwned by another user" if method in ("PUT", "POST") else None
            conn.request(method, path, body=body, headers={"Content-Type": "application/octet-stream"})
            resp = conn.getresponse()
            data = resp.read(1 << 20)
            record["status"] = resp.status
            record["leak"] = leaked(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data, marker)
            conn.close()
        except (OSError, http.client.HTTPException) as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"[:200]
        print(json.dumps(record), flush=True)


def h2_attempt(connect, where: str, how: str) -> None:
    """A gRPC client's first bytes; a gRPC server that lets us in answers with SETTINGS."""
    record = {"where": where, "how": how, "status": None, "error": None, "leak": False}
    try:
        sock = connect()
        sock.sendall(H2_PREFACE)
        answer = b""
        while len(answer) < 9:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        sock.close()
        record["leak"] = len(answer) >= 9 and answer[3] == 0x04  # an HTTP/2 SETTINGS frame: a session
        record["error"] = None if record["leak"] else f"closed after {len(answer)} bytes"
    except (OSError, ssl.SSLError) as exc:
        record["error"] = f"{type(exc).__name__}: {exc}"[:200]
    print(json.dumps(record), flush=True)


def main() -> None:
    args = json.loads(sys.argv[1])
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE  # we have no CA: the point is the server wanting our certificate
    h2 = ssl.create_default_context()
    h2.check_hostname = False
    h2.verify_mode = ssl.CERT_NONE
    h2.set_alpn_protocols(["h2"])
    for port in args["ports"]:
        where = f"127.0.0.1:{port}"
        http_attempts(lambda: http.client.HTTPConnection("127.0.0.1", port, timeout=5), where, "http", args)
        http_attempts(lambda: http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=insecure),
                      where, "https without a client certificate", args)
        h2_attempt(lambda: socket.create_connection(("127.0.0.1", port), timeout=5), where, "grpc plain")
        h2_attempt(lambda: h2.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5)),
                   where, "grpc tls without a client certificate")
    for path in args["sockets"]:
        http_attempts(lambda: UnixHTTPConnection(path), path, "unix http", args)

        def unix() -> socket.socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(5)
            sock.connect(path)
            return sock
        h2_attempt(unix, path, "unix grpc plain")


if __name__ == "__main__":
    main()
