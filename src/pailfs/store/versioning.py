"""Bucket versioning and undelete: protection against accidental deletion.

`pailfs versioning on BUCKET` keeps every overwritten or deleted object as an
older version; `pailfs undelete s3://BUCKET/KEY` copies the newest earlier
version back as the current object.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from urllib.parse import quote

from pailfs.errors import NotFound, NotSupported
from pailfs.store.s3 import S3Store

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def _find(el: ET.Element, name: str) -> str | None:
    found = el.find(_NS + name)
    if found is None:
        found = el.find(name)
    return found.text if found is not None else None


def _require_s3(store) -> S3Store:
    if not isinstance(store, S3Store):
        raise NotSupported("versioning needs an S3 endpoint (s3://bucket)")
    return store


async def versioning_status(store) -> str:
    """'Enabled', 'Suspended' or 'Off' (never enabled)."""
    s3 = _require_s3(store)
    resp = await s3._api_call("GET", "", "get versioning of", None, query={"versioning": ""})
    status = _find(ET.fromstring(resp.content), "Status") if resp.content.strip() else None
    return status or "Off"


async def set_versioning(store, enabled: bool) -> None:
    s3 = _require_s3(store)
    body = ('<VersioningConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Status>{'Enabled' if enabled else 'Suspended'}</Status></VersioningConfiguration>").encode()
    await s3._api_call("PUT", "", "set versioning of", None, query={"versioning": ""}, body=body)


@dataclass(frozen=True)
class Version:
    version_id: str
    last_modified: str
    is_latest: bool
    is_delete_marker: bool
    size: int = 0


async def list_versions(store, key: str) -> list[Version]:
    """Versions and delete markers of exactly this key, newest first."""
    s3 = _require_s3(store)
    full = s3._full(key)
    versions: list[Version] = []
    query = {"versions": "", "prefix": full}
    while True:
        resp = await s3._api_call("GET", "", "list versions of", key, query=query)
        root = ET.fromstring(resp.content)
        for el in list(root):
            tag = el.tag.removeprefix(_NS)
            if tag not in ("Version", "DeleteMarker") or _find(el, "Key") != full:
                continue
            versions.append(Version(_find(el, "VersionId") or "null", _find(el, "LastModified") or "",
                                     (_find(el, "IsLatest") or "").lower() == "true", tag == "DeleteMarker",
                                     int(_find(el, "Size") or 0)))
        if (_find(root, "IsTruncated") or "").lower() != "true":
            break
        query = {"versions": "", "prefix": full, "key-marker": _find(root, "NextKeyMarker") or "",
                 "version-id-marker": _find(root, "NextVersionIdMarker") or ""}
    versions.sort(key=lambda v: (v.is_latest, v.last_modified), reverse=True)
    return versions


async def undelete(store, key: str) -> Version:
    """Make the newest earlier version of key current again; returns that version."""
    s3 = _require_s3(store)
    versions = await list_versions(store, key)
    if not versions:
        raise NotFound(f"s3://{s3.bucket}/{s3._full(key)}: no versions (is versioning on?)")
    current = versions[0]
    earlier = [v for v in versions[1:] if not v.is_delete_marker] if not current.is_delete_marker \
        else [v for v in versions if not v.is_delete_marker]
    if not earlier:
        raise NotFound(f"s3://{s3.bucket}/{s3._full(key)}: no earlier version to bring back")
    chosen = earlier[0]
    full = s3._full(key)
    source = f"/{s3.bucket}/{quote(full, safe='/')}?versionId={quote(chosen.version_id, safe='')}"
    await s3._api_call("PUT", full, "undelete", key, headers={"x-amz-copy-source": source})
    return chosen
