"""A PV's volumeAttributes, otherOpts and mountOptions, checked and turned into
structured values — no gRPC here, so `pailfs k8s manifests` runs the same checks.

Everything a PV says is untrusted: a value is checked for what it claims to be
(a bucket name, an endpoint URL, a path inside the bucket, `-o` options) and the
mount's arguments are later built from the checked values, never by pasting
attribute text into an option string.

ACK's OSS driver (`ossplugin.csi.alibabacloud.com`) PVs work with only the driver
name changed:

* keys are matched case-insensitively and values trimmed, as ACK does; an empty
  value counts as absent;
* `otherOpts` may be `a,b` (pailfs) or `-o a -o b` / `-oa,b` (ossfs, ACK);
* `url` may lack a scheme (`oss-cn-hangzhou.aliyuncs.com`: https), parsed by the
  one endpoint parser of pailfs (pailfs.store.endpoint);
* ACK attributes that mean something to pailfs are used (`readOnly`, `region`,
  `fuseType` ossfs/ossfs2, `authType` rrsa with `roleArn`/`oidcProviderArn`),
  ACK attributes that only tune ACK's own machinery are ignored with a warning,
  and those asking for something pailfs cannot do (STS via a RAM role name,
  secrets-store, server-side encryption, CNFS) are refused;
* ossfs-only `-o` options that change nothing a reader sees (`dbglevel`,
  `curldbg`, `noxattr`...) are ignored with a warning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from pailfs import config
from pailfs.errors import BadOption
from pailfs.store.endpoint import parse_endpoint
from pailfs.store.url import check_bucket


class BadVolume(BadOption):
    """A volume attribute, option or secret that cannot be used; the message is safe to show."""


# key (lower case) -> canonical name, for the attributes pailfs reads
USED = {k.lower(): k for k in ("bucket", "url", "path", "otherOpts", "readOnly", "region", "fuseType", "sigVersion",
                                "authType", "roleArn", "oidcProviderArn")}
# ACK attributes that tune ACK's own machinery: nothing for pailfs to do
IGNORED = {k.lower(): k for k in (
    "useSharedPath", "volumeAs", "metricsTop", "dnsPolicy", "overlay", "recovery", "runtimeClass",
    "directAssigned", "mountProxySocket", "resourceGroupId")}
# ACK attributes asking for what pailfs does not do: mounting anyway would be wrong
REFUSED = {
    "akid": "credentials go in the volume's secret (nodePublishSecretRef: akId/akSecret), not in volumeAttributes",
    "aksecret": "credentials go in the volume's secret (nodePublishSecretRef: akId/akSecret), not in volumeAttributes",
    "rolename": "the node's RAM role is not a volume's to use; use authType rrsa (roleArn) or the volume's secret",
    "ramrole": "the node's RAM role is not a volume's to use; use authType rrsa (roleArn) or the volume's secret",
    "assumerolearn": "chained role assumption is not supported; use authType rrsa (roleArn) or the volume's secret",
    "externalid": "chained role assumption is not supported; use authType rrsa (roleArn) or the volume's secret",
    "serviceaccountname": "the pod's own service account is used (authType rrsa/irsa)",
    "secretproviderclass": "secrets-store credentials are not supported; use nodePublishSecretRef",
    "secretref": "use nodePublishSecretRef for the volume's secret",
    "encrypted": "pailfs does not request server-side encryption; use the bucket's default encryption",
    "kmskeyid": "pailfs does not request server-side encryption; use the bucket's default encryption",
    "containernetworkfilesystem": "CNFS is not supported; name the bucket and url in the PV",
    "agenticbucket": "agentic buckets are not supported",
    "bucketspace": "agentic buckets are not supported",
    "bucketspaceprefix": "agentic buckets are not supported",
}
# fuseType values: pailfs serves the volume whichever FUSE client the PV named
FUSE_TYPES = frozenset({"ossfs", "ossfs2", "pailfs", "fuse.pailfs"})
# Keys kubelet adds on its own (podInfoOnMount, ephemeral volumes, service account tokens).
KUBELET_PREFIX = "csi.storage.k8s.io/"

# ossfs options with no effect on what a reader sees (logging, signing, listing
# style, xattrs): accepted and ignored with a warning.
OSSFS_ONLY_OPTIONS = frozenset({
    "dbglevel", "curldbg", "noxattr", "sigv1", "sigv4", "listobjectsv2", "enable_content_md5",
    "complement_stat", "notsup_compat_dir", "readdir_optimize", "direct_read", "max_background",
    "dns_cache", "nodnscache", "nosscache", "instance_name", "retry_times",
})
# Options the plugin sets itself, and options a PV may not set: `debug` logs every
# request of every pod into the plugin's log.
PLUGIN_OWNED = frozenset({"url", "passwd_file"})
NOT_IN_VOLUMES = {
    "debug": "it would log every request of every pod",
    "ram_role": "the node's instance role is not a volume's to use",
    "iam_role": "the node's instance role is not a volume's to use",
}
# authType -> the token audience its STS expects (the pod's token comes from kubelet)
TOKEN_AUDIENCES = {"irsa": "sts.amazonaws.com", "rrsa": "sts.aliyuncs.com"}
_ROLE_ARN_RE = {"irsa": re.compile(r"^arn:aws[a-z-]*:iam::(?:\d{1,12}:)?role/[\w+=,.@/-]{1,512}$"),
                "rrsa": re.compile(r"^acs:ram::\d{1,20}:role/[\w.-]{1,64}$")}
_OIDC_PROVIDER_RE = re.compile(r"^acs:ram::\d{1,20}:oidc-provider/[\w.-]{1,128}$")


@dataclass(frozen=True)
class VolumeSpec:
    """What a PV asks for, checked. `tokens` are `name` or `name=value` options
    for `pailfs mount -o`, none holding a comma; `warnings` list what was ignored."""

    bucket: str
    path: str                 # prefix inside the bucket, '' for the whole bucket
    endpoint: str             # scheme://host[:port]
    tokens: tuple[str, ...]
    read_only: bool           # the PV's own readOnly attribute
    warnings: tuple[str, ...] = field(default=())
    auth: str = "secret"      # "secret" (akId/akSecret), "irsa" or "rrsa" (the pod's token)
    role_arn: str = ""
    oidc_provider_arn: str = ""

    @property
    def source(self) -> str:
        return self.bucket + (f":/{self.path}" if self.path else "")


def parse_volume(attributes: Mapping[str, str], mount_flags: Sequence[str] = ()) -> VolumeSpec:
    """Check a PV's volumeAttributes and mountOptions; raises BadVolume (one line)."""
    attrs, warnings = _normalize_keys(attributes)
    bucket = attrs.get("bucket", "")
    if not bucket:
        raise BadVolume("volumeAttributes.bucket is required")
    check_bucket_name(bucket)
    raw_url = attrs.get("url", "")
    if not raw_url:
        raise BadVolume("volumeAttributes.url is required (the object store endpoint)")
    endpoint = endpoint_url(raw_url, bucket=bucket)
    path = subpath(attrs.get("path", ""))

    tokens: list[str] = []
    if "region" in attrs:
        tokens.append(f"region={_plain('region', attrs['region'])}")
    fuse_type = attrs.get("fuseType", "").lower()
    if fuse_type and fuse_type not in FUSE_TYPES:
        raise BadVolume(f"volumeAttributes.fuseType {attrs['fuseType']!r} is not supported; "
                        f"pailfs stands in for {', '.join(sorted(FUSE_TYPES))}")
    sig = attrs.get("sigVersion", "").lower()
    if sig and sig != "v4":
        if sig != "v1":
            raise BadVolume(f"volumeAttributes.sigVersion {attrs['sigVersion']!r} must be v1 or v4")
        warnings.append("sigVersion v1 ignored: pailfs always signs requests with SigV4")
    read_only = _bool_attr("readOnly", attrs.get("readOnly", "false"))
    auth, role_arn, provider_arn = _auth_of(attrs)

    specs = [attrs.get("otherOpts", ""), *mount_flags]
    for token in (t for spec in specs for t in split_other_opts(spec)):
        kept = _check_token(token, warnings)
        if kept is not None:
            tokens.append(kept)
    validate_tokens([*tokens, f"url={endpoint}"])
    return VolumeSpec(bucket=bucket, path=path, endpoint=endpoint, tokens=tuple(tokens),
                      read_only=read_only, warnings=tuple(warnings), auth=auth, role_arn=role_arn,
                      oidc_provider_arn=provider_arn)


def _auth_of(attrs: Mapping[str, str]) -> tuple[str, str, str]:
    """(authType, roleArn, oidcProviderArn) of a volume, checked."""
    auth = attrs.get("authType", "").lower() or "secret"
    if auth not in ("secret", *TOKEN_AUDIENCES):
        raise BadVolume(f"volumeAttributes.authType {auth!r} is not one of secret, irsa, rrsa")
    role, provider = attrs.get("roleArn", ""), attrs.get("oidcProviderArn", "")
    if auth == "secret":
        if role or provider:
            raise BadVolume("volumeAttributes.roleArn/oidcProviderArn need authType irsa or rrsa")
        return auth, "", ""
    if not _ROLE_ARN_RE[auth].match(role):
        example = "arn:aws:iam::123456789012:role/NAME" if auth == "irsa" else "acs:ram::UID:role/NAME"
        raise BadVolume(f"volumeAttributes.roleArn must be a role ARN like {example} for authType {auth}")
    if auth == "rrsa" and not _OIDC_PROVIDER_RE.match(provider):
        raise BadVolume("volumeAttributes.oidcProviderArn must be like acs:ram::UID:oidc-provider/NAME "
                        "for authType rrsa")
    if auth == "irsa" and provider:
        raise BadVolume("volumeAttributes.oidcProviderArn is for authType rrsa only")
    return auth, role, provider


def _normalize_keys(attributes: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """Canonical key -> trimmed value; refuses unknown keys and a key given twice."""
    found: dict[str, str] = {}
    given: dict[str, str] = {}
    warnings: list[str] = []
    unknown: list[str] = []
    for key, value in attributes.items():
        if key.startswith(KUBELET_PREFIX):
            continue
        low = key.strip().lower()
        value = (value or "").strip()
        if low in given:
            raise BadVolume(f"volumeAttributes {given[low]!r} and {key!r} name the same attribute")
        given[low] = key
        if low in REFUSED:
            if value:
                raise BadVolume(f"volumeAttributes.{key} is not supported: {REFUSED[low]}")
        elif low in IGNORED:
            if value:
                warnings.append(f"volumeAttributes.{IGNORED[low]} ignored: it tunes ACK's own driver")
        elif low in USED:
            if value:
                found[USED[low]] = value
        else:
            unknown.append(key)
    if unknown:
        raise BadVolume(f"unknown volumeAttributes {', '.join(repr(k) for k in sorted(unknown))}; "
                        f"valid: {', '.join(sorted(USED.values()))}")
    return found, warnings


def check_bucket_name(bucket: str) -> None:
    try:
        check_bucket(bucket, bucket)
    except BadOption:
        raise BadVolume(f"bucket {bucket!r} is not a valid bucket name "
                        "(3-63 lower-case letters, digits, '-' or '.')") from None


def endpoint_url(text: str, *, bucket: str | None = None) -> str:
    """`scheme://host[:port]` for an endpoint as a PV writes it (pailfs.store.endpoint's
    rules: http or https, https when left out; no credentials, path or query); BadVolume
    unless it is one."""
    text = text.strip()
    if "@" in text:  # never echo it: the part before '@' may be a password
        raise BadVolume("url must not hold credentials (user:password@); use the volume's secret")
    if any(c.isspace() or c in ",;\"'\\<>{}|^`" for c in text):
        raise BadVolume(f"url {text[:200]!r} is not an endpoint URL (no commas, quotes or spaces)")
    try:
        endpoint = parse_endpoint(text)
    except BadOption as exc:
        raise BadVolume(f"url: {exc}") from None
    host = endpoint.host
    if bucket and host.lower().startswith(bucket + ".") and host.count(".") >= 3:
        raise BadVolume(f"url {text!r} names the bucket's own domain; give the region endpoint "
                        f"(e.g. {host[len(bucket) + 1:]}) and the bucket separately")
    return endpoint.url


def subpath(path: str) -> str:
    """A prefix inside the bucket without leading/trailing '/'; '' for the whole bucket."""
    path = path.strip()
    if any(ord(c) < 0x20 or c == "\x7f" for c in path):
        raise BadVolume(f"volumeAttributes.path {path!r} must not hold control characters")
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise BadVolume(f"volumeAttributes.path {path!r} must be a plain path inside the bucket")
    return "/".join(parts)


def split_other_opts(spec: str) -> list[str]:
    """Tokens of `a,b` (pailfs) or `-o a -o b` / `-oa,b` (ossfs) option text."""
    words = spec.split()
    if not any(w.startswith("-o") for w in words):
        tokens = config.split_tokens(spec)
        if any(len(t.split()) > 1 for t in tokens):
            raise BadVolume(f"options {spec!r}: write 'a,b' or '-o a -o b'")
        return tokens
    tokens: list[str] = []
    expect = False
    for word in words:
        if expect:
            tokens += config.split_tokens(word)
            expect = False
        elif word == "-o":
            expect = True
        elif word.startswith("-o"):
            tokens += config.split_tokens(word[2:])
        else:
            raise BadVolume(f"options {spec!r}: {word!r} is not preceded by -o")
    if expect:
        raise BadVolume(f"options {spec!r} end with a -o that has no option")
    return tokens


def _check_token(token: str, warnings: list[str]) -> str | None:
    name = token.partition("=")[0].strip()
    if name in OSSFS_ONLY_OPTIONS:
        warnings.append(f"option '{name}' ignored: an ossfs option with no pailfs meaning")
        return None
    opt = _lookup(name)
    if opt is not None and opt.local_path:
        raise BadVolume(f"option '{name}' names a file, command or service on the node and is not allowed "
                        "in a volume; credentials come from the volume's secret (akId/akSecret) or authType")
    if opt is not None and opt.name in PLUGIN_OWNED:
        raise BadVolume(f"option '{name}' is set by the plugin; use volumeAttributes.url for the endpoint")
    if opt is not None and opt.name in NOT_IN_VOLUMES:
        raise BadVolume(f"option '{name}' is not allowed in a volume: {NOT_IN_VOLUMES[opt.name]}")
    if any(ord(c) < 0x20 for c in token):
        raise BadVolume(f"option {token!r} holds control characters")
    return token


def validate_tokens(tokens: Iterable[str]) -> config.Options:
    """Parse tokens as `pailfs mount -o` would (the node's environment left out)."""
    try:
        return config.parse_options(list(tokens), env={})
    except BadOption as exc:
        raise BadVolume(f"bad mount option: {exc}") from None


def option_name(token: str) -> str:
    """The canonical option name of a `name[=value]` token (aliases resolved)."""
    name = token.partition("=")[0].strip()
    opt = _lookup(name)
    return opt.name if opt is not None else name


def _lookup(name: str) -> config.Option | None:
    try:
        return config.option(name)
    except KeyError:
        return None  # generic mount flags and unknown names: parse_options decides


def _plain(name: str, value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", value):
        raise BadVolume(f"volumeAttributes.{name} {value!r} must be a plain name")
    return value


def _bool_attr(name: str, value: str) -> bool:
    low = value.lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no", ""):
        return False
    raise BadVolume(f"volumeAttributes.{name} {value!r} must be true or false")
