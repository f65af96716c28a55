"""Store URLs: `s3://bucket/prefix` (also `oss://`), ossfs's `bucket:/prefix` and bare
`bucket`, and `file:///dir` for a local directory used as a bucket."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from pailfs.errors import BadOption

REMOTE_SCHEMES = ("s3", "oss")
# S3 / OSS bucket naming rules (lower case, 3-63 chars, no '_')
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_OSSFS_RE = re.compile(r"^([^:/]+):(/.*)?$")


@dataclass(frozen=True)
class StoreURL:
    """A parsed location. For s3, `path` is a key or prefix inside the bucket (no
    leading '/'); for file, `path` is the local directory."""

    scheme: str  # "s3" or "file"
    bucket: str
    path: str = ""

    @property
    def is_remote(self) -> bool:
        return self.scheme == "s3"

    def __str__(self) -> str:
        if self.scheme == "file":
            return f"file://{self.path}"
        return f"s3://{self.bucket}/{self.path}"


def is_remote_url(text: str) -> bool:
    """True for `s3://...` and `oss://...` (the CLI treats everything else as a local path)."""
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.lower() in REMOTE_SCHEMES


def check_bucket(name: str, text: str) -> None:
    if not _BUCKET_RE.match(name) or ".." in name:
        raise BadOption(f"malformed URL '{text}': bucket name '{name}' must be 3-63 lower-case "
                        "letters, digits, '-' or '.'")


def parse_url(text: str, *, allow_no_bucket: bool = False) -> StoreURL:
    """Parse a store URL; BadOption with a one-line reason when malformed."""
    if not text or text != text.strip() or any(ord(c) < 0x20 for c in text):
        raise BadOption(f"malformed URL {text!r}: empty, surrounding spaces or control characters")
    scheme, sep, rest = text.partition("://")
    if sep:
        scheme = scheme.lower()
        if scheme == "file":
            path = unquote(rest)
            if not path.startswith("/"):
                raise BadOption(f"malformed URL '{text}': a file URL needs an absolute path, e.g. file:///data/bucket")
            return StoreURL("file", "", path.rstrip("/") or "/")
        if scheme not in REMOTE_SCHEMES:
            raise BadOption(f"malformed URL '{text}': unknown scheme '{scheme}://' "
                            "(use s3://bucket/prefix, bucket:/prefix or file:///dir)")
        bucket, _, path = rest.partition("/")
        if not bucket:
            if allow_no_bucket and not path:
                return StoreURL("s3", "", "")
            raise BadOption(f"malformed URL '{text}': no bucket name (use s3://bucket/prefix)")
        check_bucket(bucket, text)
        return StoreURL("s3", bucket, path)
    if text.startswith(("/", ".", "~")):
        raise BadOption(f"malformed URL '{text}': a local directory is written file://{text if text.startswith('/') else '/abs/path'}")
    match = _OSSFS_RE.match(text)
    if match:  # ossfs: bucket:/prefix
        bucket, path = match.group(1), (match.group(2) or "").lstrip("/")
        check_bucket(bucket, text)
        return StoreURL("s3", bucket, path)
    bucket, _, path = text.partition("/")  # bucket or bucket/prefix, as `pailfs ls` prints them
    check_bucket(bucket, text)
    return StoreURL("s3", bucket, path)
