"""LIST pages: the regex path and the ElementTree path give the same Listing.

The store contract suite runs the parser against SeaweedFS; these bodies are the
shapes other servers send (AWS order and Owner, pretty-printing, namespace
prefixes, CDATA, escaped keys), where the fast path must either agree or step aside.
"""

from __future__ import annotations

import pytest

from pailfs.store.listxml import _parse_plain, parse_list, parse_list_tree

HEAD = b'<?xml version="1.0" encoding="UTF-8"?>\n'
NS = b'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'

SEAWEED = HEAD + (
    b'<ListBucketResult ' + NS + b'><Name>b</Name><Prefix>root/d/</Prefix><MaxKeys>3</MaxKeys>'
    b'<Delimiter>/</Delimiter><IsTruncated>true</IsTruncated>'
    b'<EncodingType>url</EncodingType>'
    b'<Contents><Key>root/d/a%20b+c%2Bd.jpg</Key><ETag>&#34;47d30ac886956d5f32461ce5e46ec5ab&#34;</ETag>'
    b'<Size>4046</Size><StorageClass>STANDARD</StorageClass><LastModified>2026-11-27T01:32:44Z</LastModified></Contents>'
    b'<Contents><Key>root/d/%E6%97%A5%E6%9C%AC</Key><ETag>&#34;76f50b8264fdfb538754a4fc2fa2a978-3&#34;</ETag>'
    b'<Size>0</Size><StorageClass>STANDARD</StorageClass><LastModified>2026-11-27T01:32:43Z</LastModified></Contents>'
    b'<Contents><Key>root/d/</Key><ETag>&#34;d41d8cd98f00b204e9800998ecf8427e&#34;</ETag>'
    b'<Size>0</Size><StorageClass>STANDARD</StorageClass><LastModified>2026-11-27T01:32:44Z</LastModified></Contents>'
    b'<CommonPrefixes><Prefix>root/d/sub%20dir/</Prefix></CommonPrefixes>'
    b'<NextContinuationToken>tok%2Ben&amp;=</NextContinuationToken></ListBucketResult>')

AWS_PRETTY = HEAD + b"""<ListBucketResult """ + NS + b""">
  <Name>b</Name>
  <Prefix></Prefix>
  <KeyCount>2</KeyCount>
  <MaxKeys>1000</MaxKeys>
  <Delimiter>/</Delimiter>
  <IsTruncated>false</IsTruncated>
  <Contents>
    <Key>a&amp;b&lt;c&gt;d</Key>
    <LastModified>2009-10-12T17:50:30.000Z</LastModified>
    <ETag>&quot;fba9dede5f27731c9771645a39863328&quot;</ETag>
    <ChecksumAlgorithm>CRC32</ChecksumAlgorithm>
    <Size>434234</Size>
    <Owner><ID>75aa57f09aa0c8caeab4f8c24e99d10f8e7faeebf76c078efc7c6caea54ba06a</ID><DisplayName>me</DisplayName></Owner>
    <StorageClass>STANDARD</StorageClass>
  </Contents>
  <Contents>
    <Key>plain.txt</Key>
    <LastModified>2009-10-12T17:50:31.000Z</LastModified>
    <ETag></ETag>
    <Size>1</Size>
    <StorageClass>STANDARD</StorageClass>
  </Contents>
  <CommonPrefixes>
    <Prefix>photos/</Prefix>
  </CommonPrefixes>
</ListBucketResult>"""

PREFIXED = HEAD + (
    b'<s3:ListBucketResult xmlns:s3="http://s3.amazonaws.com/doc/2006-03-01/"><s3:IsTruncated>false</s3:IsTruncated>'
    b'<s3:Contents><s3:Key>x</s3:Key><s3:Size>1</s3:Size><s3:ETag>"e"</s3:ETag>'
    b'<s3:LastModified>2020-01-01T00:00:00Z</s3:LastModified></s3:Contents></s3:ListBucketResult>')


def _page(*entries: bytes) -> bytes:
    """A whole (untruncated) page whose <Contents> elements hold these entries."""
    return (HEAD + b'<ListBucketResult ' + NS + b'><IsTruncated>false</IsTruncated>'
            + b"".join(b"<Contents>" + entry + b"</Contents>" for entry in entries) + b"</ListBucketResult>")


def _entry(key: bytes, size: int = 1, etag: bytes | None = b'"e"') -> bytes:
    return (b"<Key>" + key + b"</Key><Size>%d</Size>" % size
            + (b"<ETag>" + etag + b"</ETag>" if etag is not None else b"")
            + b"<LastModified>2020-01-01T00:00:00Z</LastModified>")


CDATA = _page(_entry(b"<![CDATA[a<b]]>"))
NEWLINE_KEY = _page(_entry(b"line1&#10;line2"), _entry(b"raw\nnewline", 2, b'"f"'))
KEY_LOOKS_LIKE_XML = _page(_entry(b"&lt;Contents>&lt;Key>x&lt;/Key>"))
MISSING_ETAG = _page(_entry(b"a", etag=None), _entry(b"b", 2, b'"f"'))


def test_a_seaweedfs_page_takes_the_fast_path_and_decodes_every_field():
    page, token = parse_list(SEAWEED, len("root/"))
    assert _parse_plain(SEAWEED, 5) is not None
    assert [(o.key, o.size, o.etag) for o in page.objects] == [
        ("d/a b c+d.jpg", 4046, '"47d30ac886956d5f32461ce5e46ec5ab"'),
        ("d/日本", 0, '"76f50b8264fdfb538754a4fc2fa2a978-3"'),
        ("d/", 0, '"d41d8cd98f00b204e9800998ecf8427e"'),
    ]
    assert page.objects[0].mtime == 1795743164.0 and page.objects[1].mtime == 1795743163.0
    assert page.prefixes == ["d/sub dir/"]
    assert token == "tok%2Ben&="  # tokens are opaque: unescaped from XML, never URL-decoded


def test_an_aws_page_with_owner_and_indentation_takes_the_fast_path():
    page, token = parse_list(AWS_PRETTY, 0)
    assert _parse_plain(AWS_PRETTY, 0) is not None
    assert [(o.key, o.size, o.etag) for o in page.objects] == [
        ("a&b<c>d", 434234, '"fba9dede5f27731c9771645a39863328"'), ("plain.txt", 1, None)]
    assert page.prefixes == ["photos/"] and token is None


@pytest.mark.parametrize("body", [PREFIXED, CDATA, NEWLINE_KEY, KEY_LOOKS_LIKE_XML, MISSING_ETAG],
                         ids=["namespace-prefix", "cdata", "newline-in-key", "key-looks-like-xml", "missing-etag"])
def test_pages_of_other_shapes_give_what_elementtree_gives(body):
    page, token = parse_list(body, 0)
    tree_page, tree_token = parse_list_tree(body, 0)
    assert page.objects == tree_page.objects and page.prefixes == tree_page.prefixes and token == tree_token
    assert page.objects  # every one of these bodies lists something


@pytest.mark.parametrize("body", [SEAWEED, AWS_PRETTY])
def test_both_paths_agree_on_plain_pages(body):
    fast, tree = parse_list(body, 0), parse_list_tree(body, 0)
    assert fast[0].objects == tree[0].objects and fast[0].prefixes == tree[0].prefixes and fast[1] == tree[1]


def test_keys_that_need_care_come_out_exact():
    assert [o.key for o in parse_list(NEWLINE_KEY, 0)[0].objects] == ["line1\nline2", "raw\nnewline"]
    assert [o.key for o in parse_list(KEY_LOOKS_LIKE_XML, 0)[0].objects] == ["<Contents><Key>x</Key>"]
    assert [o.key for o in parse_list(CDATA, 0)[0].objects] == ["a<b"]
    assert [(o.key, o.etag) for o in parse_list(MISSING_ETAG, 0)[0].objects] == [("a", None), ("b", '"f"')]
