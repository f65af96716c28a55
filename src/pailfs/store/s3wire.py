"""What S3 requests and answers look like, for S3Store: which keys obstore can
carry byte for byte, user metadata as S3 allows it, and the few fields pailfs
reads out of S3's XML and HTTP answers."""

from __future__ import annotations

import email.utils
import re
import time
import xml.etree.ElementTree as ET
from typing import Mapping

from pailfs.errors import StoreError
from pailfs.store.listxml import NS as _NS

# obstore attributes that are headers, not user metadata
HEADER_ATTRIBUTES = frozenset({"Content-Disposition", "Content-Encoding", "Content-Language",
                                "Content-Type", "Cache-Control", "Storage-Class"})


def obstore_can_spell(key: str) -> bool:
    """Whether obstore's Path keeps this key byte for byte (else S3Api carries it)."""
    if not key or key.startswith("/") or key.endswith("/") or "//" in key:
        return False
    if any(part in (".", "..") for part in key.split("/")):
        return False
    return not any(ord(c) < 0x20 or ord(c) == 0x7F for c in key)


def http_date(text: str | None) -> float:
    if not text:
        return time.time()
    try:
        return email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return time.time()


def checked_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in (metadata or {}).items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or not value.isascii() or not value.isprintable():
            raise StoreError(f"metadata '{name}' is not allowed: names are letters, digits, '-', '_', '.'; "
                             "values are printable ASCII")
        out[name.lower()] = value
    return out


def obstore_attributes(meta: dict[str, str], content_type: str | None) -> dict[str, str] | None:
    """obstore attributes: user metadata, and Content-Type when given."""
    attributes = dict(meta)
    if content_type:
        attributes["Content-Type"] = content_type
    return attributes or None


def xml_text(body: bytes, tag: str) -> str | None:
    """The text of the first <tag> in an S3 XML answer (None if absent or malformed)."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return None
    found = root.find(_NS + tag)
    if found is None:
        found = root.find(tag)
    return found.text if found is not None else None


def find_text(tree: ET.Element, name: str) -> str | None:
    for el in tree:
        if el.tag.rsplit("}", 1)[-1] == name:
            return el.text
    return None
