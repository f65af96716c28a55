"""ListObjectsV2 response bodies into Listing pages.

A cold walk parses 1,000 entries per page, and building an ElementTree of a
200 KB page costs about 4 ms of the mount's CPU — more than the rest of the walk.
So pages of the plain shape every S3 server sends (the same number of `<Key>`,
`<Size>`, `<ETag>` and `<LastModified>` elements as `<Contents>`, no CDATA, no
namespace prefixes) are read with one regex pass per field, and anything else
goes through ElementTree. Either path gives the same Listing.
"""

from __future__ import annotations

import datetime as _dt
import html
import re
import xml.etree.ElementTree as ET
from itertools import repeat
from urllib.parse import unquote_plus

from pailfs.store.base import Listing, ObjectInfo

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"

_KEY = re.compile(rb"<Key>([^<]*)</Key>")
_SIZE = re.compile(rb"<Size>([^<]*)</Size>")
_ETAG = re.compile(rb"<ETag>([^<]*)</ETag>")
_DATE = re.compile(rb"<LastModified>([^<]*)</LastModified>")
_PREFIX = re.compile(rb"<CommonPrefixes>\s*<Prefix>([^<]*)</Prefix>\s*</CommonPrefixes>")
_TRUNCATED = re.compile(rb"<IsTruncated>\s*([^<]*?)\s*</IsTruncated>")
_TOKEN = re.compile(rb"<NextContinuationToken>([^<]*)</NextContinuationToken>")
_ENCODING = re.compile(rb"<EncodingType>\s*([^<]*?)\s*</EncodingType>")


def iso_date(text: str | None) -> float:
    if not text:
        return 0.0
    try:
        return _dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def parse_list(body: bytes, strip: int) -> tuple[Listing, str | None]:
    """One page and the continuation token (None on the last page); keys lose
    their first `strip` characters (the store's root prefix)."""
    try:
        parsed = _parse_plain(body, strip)
    except (UnicodeDecodeError, ValueError):
        parsed = None
    return parsed if parsed is not None else parse_list_tree(body, strip)


def _parse_plain(body: bytes, strip: int) -> tuple[Listing, str | None] | None:
    """The regex path; None when the page is not of the plain shape."""
    if (b"<![CDATA[" in body or b"\r" in body  # XML would rewrite CRs in text
            or not body.lstrip().startswith((b"<?xml", b"<ListBucketResult"))):
        return None
    entries = body.count(b"<Contents>")
    common = body.count(b"<CommonPrefixes>")
    # any prefixed, attributed or unbalanced element makes these counts disagree
    if (body.count(b"Contents>") != 2 * entries or body.count(b"CommonPrefixes>") != 2 * common
            or b"<ListBucketResult" not in body):
        return None
    keys, sizes, etags, dates = (_KEY.findall(body), _SIZE.findall(body), _ETAG.findall(body),
                                 _DATE.findall(body))
    prefixes = _PREFIX.findall(body)
    if not (len(keys) == len(sizes) == len(etags) == len(dates) == entries and len(prefixes) == common
            and body.count(b"<Key>") == entries and body.count(b"<Prefix>") <= common + 1):
        return None
    encoding = _ENCODING.search(body)
    encoded = encoding is not None and encoding.group(1).lower() == b"url"
    page = Listing()
    fields = zip(_names(keys, encoded, strip), map(int, sizes), _dates(dates),
                 [etag or None for etag in _texts(etags)], repeat(None), repeat(None))  # no metadata, no type
    page.objects = list(map(tuple.__new__, repeat(ObjectInfo), fields))
    page.prefixes = _names(prefixes, encoded, strip)
    truncated = _TRUNCATED.search(body)
    token = None
    if truncated is not None and truncated.group(1).lower() == b"true":
        found = _TOKEN.search(body)
        token = _texts([found.group(1)])[0] if found else None
    return page, token


def _texts(raws: list[bytes]) -> list[str]:
    """Element texts, decoded and unescaped in bulk: a page has thousands, and a
    call per value costs more than the regex pass that found them."""
    if not raws:
        return []
    joined = b"\n".join(raws)
    if joined.count(b"\n") == len(raws) - 1:  # no value holds a newline itself
        # every ETag is quoted, most as &#34;: spare html.unescape for those
        text = joined.decode("utf-8").replace("&#34;", '"').replace("&quot;", '"')
        if "&" not in text:
            return text.split("\n")
    return [html.unescape(raw.decode("utf-8")) for raw in raws]


def _names(raws: list[bytes], encoded: bool, strip: int) -> list[str]:
    """Keys or prefixes without the root prefix; URL-decoded when the server encoded them."""
    names = _texts(raws)
    if encoded:
        names = [unquote_plus(n) if "%" in n or "+" in n else n for n in names]
    return [n[strip:] for n in names] if strip else names


def _dates(raws: list[bytes]) -> list[float]:
    # uploads share seconds: one parse per distinct date
    distinct = list(set(raws))
    mtimes = {raw: iso_date(text) for raw, text in zip(distinct, _texts(distinct))}
    return [mtimes[raw] for raw in raws]


def parse_list_tree(body: bytes, strip: int) -> tuple[Listing, str | None]:
    """The ElementTree path, for any well-formed ListObjectsV2 body."""
    root = ET.fromstring(body)
    ns = NS if root.tag.startswith(NS) else ""
    encoded = (root.findtext(ns + "EncodingType") or "").lower() == "url"
    key_tag, size_tag, date_tag, etag_tag, prefix_tag = (
        ns + "Key", ns + "Size", ns + "LastModified", ns + "ETag", ns + "Prefix")
    dates: dict[str, float] = {}

    def dec(text: str | None) -> str:
        text = text or ""
        return unquote_plus(text) if encoded and ("%" in text or "+" in text) else text

    page = Listing()
    for item in root.iterfind(ns + "Contents"):
        fields = {child.tag: child.text for child in item}
        date = fields.get(date_tag) or ""
        mtime = dates.get(date)
        if mtime is None:
            mtime = dates[date] = iso_date(date)
        page.objects.append(ObjectInfo(dec(fields.get(key_tag))[strip:], int(fields.get(size_tag) or 0),
                                       mtime, fields.get(etag_tag)))
    for item in root.iterfind(ns + "CommonPrefixes"):
        page.prefixes.append(dec(item.findtext(prefix_tag))[strip:])
    truncated = (root.findtext(ns + "IsTruncated") or "false").lower() == "true"
    token = root.findtext(ns + "NextContinuationToken") if truncated else None
    return page, token
