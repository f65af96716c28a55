"""Every pailfs option, declared once.

The table below is the single source for `-o` parsing, `--help`, environment
look-ups and docs/configuration.md (`python -m pailfs.config` prints it).
Names and defaults follow ossfs / s3fs-fuse so their users feel at home.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

from pailfs.errors import BadOption

MB = 1024 * 1024


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("", "1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected a boolean (true/false)")


def _parse_octal(text: str) -> int:
    value = int(text, 8)
    if not 0 <= value <= 0o777:
        raise ValueError("expected an octal mode between 000 and 777")
    return value


def _parse_id(text: str) -> int:
    value = int(text, 10)
    if not 0 <= value < 2**32:
        raise ValueError("expected a numeric id")
    return value


# Counts and sizes reach obstore (Rust usize, and MB * 2**20 must still fit) and
# timeouts reach datetime.timedelta: bound them so that a typo is a BadOption, not a crash.
MAX_COUNT = 2**31 - 1
MAX_SECONDS = 365 * 86400


def _at_most(value, limit):  # noqa: ANN001, ANN202
    if value > limit:
        raise ValueError(f"must be at most {limit}")
    return value


def _nonneg_int(text: str) -> int:
    value = int(text, 10)
    if value < 0:
        raise ValueError("must be >= 0")
    return _at_most(value, MAX_COUNT)


def _pos_int(text: str) -> int:
    value = int(text, 10)
    if value <= 0:
        raise ValueError("must be > 0")
    return _at_most(value, MAX_COUNT)


def _expire(text: str) -> int:
    value = int(text, 10)
    if value < -1:
        raise ValueError("must be -1 (forever) or >= 0 seconds")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:  # also refuses nan
        raise ValueError("must be > 0 seconds")
    return _at_most(value, MAX_SECONDS)


def _text(text: str) -> str:
    if not text:
        raise ValueError("must not be empty")
    return text


def _first_existing(path: str) -> str:
    """The nearest ancestor of path that exists (path itself if it does)."""
    current = os.path.abspath(path)
    while not os.path.lexists(current):
        current = os.path.dirname(current)
    return current


def _local_dir(text: str) -> str:
    """A directory pailfs creates if missing: nothing on the way may be a file.
    Checked when the options are parsed, so a mount fails before it detaches."""
    if not text or "\0" in text:
        raise ValueError("must be a directory path")
    existing = _first_existing(text)
    if not os.path.isdir(existing):
        what = "is not a directory" if existing == os.path.abspath(text) else f"is under {existing}, which is not a directory"
        raise ValueError(f"{text} {what}")
    if existing == os.path.abspath(text) and not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{text} is not writable")
    return text


def _local_file(text: str) -> str:
    """A file pailfs appends to (created if missing, in an existing directory)."""
    if not text or "\0" in text:
        raise ValueError("must be a file path")
    path = os.path.abspath(text)
    if os.path.isdir(path):
        raise ValueError(f"{text} is a directory")
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise ValueError(f"directory {parent} does not exist")
    if not os.access(path if os.path.exists(path) else parent, os.W_OK):
        raise ValueError(f"{text} is not writable")
    return text


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError("expected " + ", ".join(choices[:-1]) + " or " + choices[-1])
        return text
    return parse


@dataclass(frozen=True)
class Option:
    """One user-facing option: its name, how to parse it, its default, its help."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    kind: str = "value"  # "flag" (no '=') or "value"
    aliases: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    unit: str = ""
    # where the option may come from: CSI otherOpts must not name local files (nor commands)
    local_path: bool = False
    # flags of other tools that set this option: (flag, value when on, value when =false)
    switches: tuple[tuple[str, Any, Any], ...] = ()

    @property
    def metavar(self) -> str:
        return "" if self.kind == "flag" else "=" + (self.unit or "VALUE")


OPTIONS: tuple[Option, ...] = (
    Option("url", _text, None, "Endpoint of the object store: host, host:port or scheme://host[:port]; without a scheme, "
           "https. E.g. oss-cn-hangzhou.aliyuncs.com, https://s3.us-west-2.amazonaws.com, http://127.0.0.1:8333.",
           env=("PAILFS_ENDPOINT",), unit="URL"),
    Option("region", _text, None, "Signing region (S3 SigV4). Unset: from an OSS or AWS endpoint host "
           "(oss-cn-hangzhou.aliyuncs.com -> cn-hangzhou, s3.us-west-2.amazonaws.com -> us-west-2), else us-east-1.",
           env=("PAILFS_REGION", "AWS_REGION"), unit="NAME"),
    Option("addressing", _choice("auto", "virtual", "path"), "auto",
           "How buckets are addressed: virtual (https://bucket.host), path (https://host/bucket), or auto: virtual "
           "for OSS (*.aliyuncs.com) and AWS (*.amazonaws.com) hosts, path for IP addresses, localhost and other hosts. "
           "The s3fs/ossfs flags use_path_request_style (= path) and virtual_hosted (= virtual) set it too.",
           env=("PAILFS_ADDRESSING",), unit="MODE",
           switches=(("use_path_request_style", "path", "virtual"), ("virtual_hosted", "virtual", "path"))),
    Option("ca_file", _text, None, "PEM file of CA certificates trusted for https endpoints (and STS) besides the "
           "system CAs; verification is never switched off.", env=("PAILFS_CA_FILE", "AWS_CA_BUNDLE"), unit="FILE",
           local_path=True),
    Option("passwd_file", _text, None, "Credentials file in ossfs format ('bucket:AK:SK[:TOKEN]' or 'AK:SK' lines); "
           "must be mode 0600 or 0400. First of the credential sources; see docs/configuration.md for the order.",
           unit="FILE", local_path=True),
    Option("credential_process", _text, None, "Command that prints temporary credentials as AWS JSON (AccessKeyId, "
           "SecretAccessKey, SessionToken, Expiration); run without a shell (words split like sh), again before "
           "they expire. Its stderr is never read.", env=("PAILFS_CREDENTIAL_PROCESS",), unit="CMD", local_path=True),
    Option("ram_role", _text, None, "Alibaba ECS RAM role: temporary credentials from the instance metadata service "
           "(auto: the role attached to the instance), refreshed before they expire.", unit="NAME"),
    Option("iam_role", _text, None, "AWS EC2 IAM role: temporary credentials from the instance metadata service "
           "(IMDSv2; auto: the role attached to the instance), refreshed before they expire.", unit="NAME"),
    Option("metadata_url", _text, None, "Base URL of the instance metadata service (default http://100.100.100.200 "
           "for ram_role, http://169.254.169.254 for iam_role).", unit="URL", local_path=True),
    Option("sts_endpoint", _text, None, "STS endpoint for web identity credentials (RRSA/IRSA). Default: "
           "sts[.ALIBABA_CLOUD_STS_REGION].aliyuncs.com for RRSA, sts.REGION.amazonaws.com for IRSA.",
           env=("PAILFS_STS_ENDPOINT", "AWS_STS_ENDPOINT"), unit="URL", local_path=True),
    Option("ro", _parse_bool, False, "Read-only mount: every modifying call fails with EROFS; enables zero-message opens.", kind="flag"),
    Option("rw", _parse_bool, False, "Read-write mount (the default; accepted for fstab compatibility).", kind="flag"),
    Option("kernel_cache", _parse_bool, False, "Keep the kernel page cache across opens; kernel entry/attr timeouts = stat_cache_expire.", kind="flag"),
    Option("parallel_count", _pos_int, 20, "Concurrent parts when uploading or downloading one large object.", unit="N"),
    Option("max_multireq", _pos_int, 20, "Concurrent metadata requests (HEAD/LIST); must be >= parallel_count.", unit="N"),
    Option("max_stat_cache_size", _nonneg_int, 1000, "Metadata entries cached (LRU); 0 disables the stat cache: every lookup asks the store. "
           "Size it to the files and directories a job uses (about 400 bytes each); a smaller cache costs one HEAD "
           "per lookup of an evicted entry, never a new listing.", unit="N"),
    Option("stat_cache_expire", _expire, 900, "Seconds a cached entry is trusted; -1 = forever.", unit="SECONDS"),
    Option("enable_noobj_cache", _parse_bool, True, "Cache 'no such object' answers (negative cache) like other entries "
           "(read-only mounts without check_missing only).", kind="flag"),
    Option("check_missing", _parse_bool, False, "Read-only mounts: a name missing from a cached listing is checked with the store "
           "(HEAD, then LIST) before ENOENT, so objects added by others show at once. Always so on read-write mounts.", kind="flag"),
    Option("uid", _parse_id, None, "Owner uid shown for every file (default: the mounting user).", unit="UID"),
    Option("gid", _parse_id, None, "Owner gid shown for every file (default: the mounting user's group).", unit="GID"),
    Option("umask", _parse_octal, None, "Files and dirs show 0777 & ~umask; unset: 0640 files, 0750 dirs (ossfs).", aliases=("mask",), unit="OCTAL"),
    Option("mp_umask", _parse_octal, None, "umask of the mount point directory itself.", unit="OCTAL"),
    Option("allow_other", _parse_bool, False, "Let other users see the mount (FUSE allow_other).", kind="flag"),
    Option("nonempty", _parse_bool, False, "Allow mounting over a non-empty directory.", kind="flag"),
    Option("use_cache", _local_dir, None, "Disk data cache: pailfs keeps it in DIR/pailfs-cache, a directory it creates and marks, "
           "and never touches other files in DIR (entries keyed by key + ETag; survives remount).", unit="DIR", local_path=True),
    Option("max_cache_size", _pos_int, 10240, "Upper bound of the disk data cache.", unit="MB"),
    Option("multipart_size", _pos_int, 10, "Part size for multipart uploads and parallel downloads.", unit="MB"),
    Option("readahead_max", _pos_int, 64, "Largest sequential readahead window of one open file.", unit="MB"),
    Option("kernel_readahead", _nonneg_int, 16, "Kernel readahead of the mount (the bdi's read_ahead_kb; root only), at most max_buffer_memory/4; "
           "0 keeps the kernel's 128 KiB, which splits a sequential read into 128 KiB requests.", unit="MB"),
    Option("fuse_poll_us", _nonneg_int, 50, "After answering a request from the cache, keep polling for the next one this long "
           "before sleeping: on a VM, waking a sleeping vCPU costs ~40 us a request (Python's open() makes one, the isatty ioctl). "
           "0 sleeps at once.", unit="us"),
    Option("max_buffer_memory", _pos_int, 512, "Memory for read buffers (prefetched and small objects) across all files.", unit="MB"),
    Option("small_object_size", _pos_int, 1, "Objects up to this size are fetched whole on first read.", unit="MB"),
    Option("readahead_files", _parse_bool, True, "Once a few files of a directory were read, fetch its other small files "
           "before they are opened (at most 0.9x the bytes read there, half of max_buffer_memory); "
           "readahead_files=0 turns it off.", kind="flag"),
    Option("connect_timeout", _seconds, 10.0, "Seconds to wait for a TCP connection to the store.", unit="SECONDS"),
    Option("readwrite_timeout", _seconds, 60.0, "Seconds one store request may take before it fails (EIO in a mount).", unit="SECONDS"),
    Option("retries", _nonneg_int, 3, "Retries of a failed store request (with backoff) before giving up.", unit="N"),
    Option("staging_dir", _local_dir, None, "Where writes are staged before upload (rw mounts): each mount in a directory "
           "DIR/pailfs-mount-UID-PID-*/ it creates and marks. Default: the temp dir.", unit="DIR", local_path=True),
    Option("ensure_diskfree", _nonneg_int, 0, "Keep this much disk free in staging_dir; writes fail with ENOSPC beyond.", unit="MB"),
    Option("max_dirty_data", _pos_int, 5120, "Dirty data of one file beyond which it streams into a multipart upload while it "
           "is written (parts of multipart_size; invisible until close/fsync completes it).", unit="MB"),
    Option("dir_rename_limit", _nonneg_int, 10000, "Most objects a directory rename may copy (0 = no directory renames).", unit="N"),
    Option("nodelete", _parse_bool, False, "Refuse unlink, rmdir and overwriting renames with EPERM; new files are still allowed.", kind="flag"),
    Option("debug", _parse_bool, False, "Debug log: every store request, every FUSE request that failed (with its errno), "
           "the FUSE INIT negotiation. Never secrets.", kind="flag"),
    Option("logfile", _local_file, None, "Write the mount's log here (default: syslog-less stderr, kept when -f).", unit="FILE", local_path=True),
)

# Generic mount(8) flags that fstab and `mount -t fuse.pailfs` pass along; accepted
# and ignored (the kernel flags among them are applied by mount(2) itself).
GENERIC_MOUNT_FLAGS = frozenset({
    "defaults", "auto", "noauto", "user", "nouser", "users", "_netdev", "nofail",
    "suid", "nosuid", "dev", "nodev", "exec", "noexec", "atime", "noatime",
    "relatime", "norelatime", "strictatime", "sync", "async", "dirsync",
})

_BY_NAME: dict[str, Option] = {}
_SWITCHES: dict[str, tuple[Option, Any, Any]] = {}
for _opt in OPTIONS:
    for _n in (_opt.name, *_opt.aliases):
        _BY_NAME[_n] = _opt
    for _flag, _on, _off in _opt.switches:
        _BY_NAME[_flag] = _opt
        _SWITCHES[_flag] = (_opt, _on, _off)


def option(name: str) -> Option:
    return _BY_NAME[name]


def valid_names() -> str:
    return ", ".join(o.name for o in OPTIONS)


@dataclass
class Options:
    """Parsed option values; attribute names are the option names."""

    values: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    def with_(self, **changes: Any) -> "Options":
        return Options({**self.values, **changes})

    @property
    def read_only(self) -> bool:
        return bool(self.values["ro"])

    def explicit(self) -> dict[str, Any]:
        """Options whose value differs from the default (for logs and child processes)."""
        return {o.name: self.values[o.name] for o in OPTIONS if self.values[o.name] != o.default}


def split_tokens(spec: str) -> list[str]:
    """Split one `-o` argument at commas; empty tokens are ignored."""
    return [t.strip() for t in spec.split(",") if t.strip()]


def parse_options(specs: list[str] | tuple[str, ...] = (), *, env: dict[str, str] | None = None,
                  overrides: dict[str, Any] | None = None) -> Options:
    """Parse `-o` strings into Options. Raises BadOption with a one-line reason."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {o.name: o.default for o in OPTIONS}
    for opt in OPTIONS:
        for var in opt.env:
            if env.get(var):
                values[opt.name] = _parse_one(opt, opt.name, env[var])
                break
    seen: set[str] = set()
    for spec in specs:
        for token in split_tokens(spec):
            name, eq, raw = token.partition("=")
            name = name.strip()
            if name in GENERIC_MOUNT_FLAGS:
                continue
            opt = _BY_NAME.get(name)
            if opt is None:
                raise BadOption(f"unknown option {name!r}; valid options: {valid_names()}")  # repr: one line whatever the input
            if name in _SWITCHES:  # e.g. use_path_request_style: a flag that sets addressing=path
                _, on, off = _SWITCHES[name]
                try:
                    values[opt.name] = on if not eq or _parse_bool(raw.strip()) else off
                except ValueError as exc:
                    raise BadOption(f"bad value for option '{name}': {raw!r} ({exc})") from None
            elif opt.kind == "flag":
                values[opt.name] = _parse_one(opt, name, raw) if eq else True
            else:
                if not eq:
                    raise BadOption(f"option '{name}' needs a value: -o {name}{opt.metavar}")
                values[opt.name] = _parse_one(opt, name, raw)
            seen.add(opt.name)
    if overrides:
        values.update(overrides)
    if values["rw"] and "ro" in seen and values["ro"]:
        raise BadOption("options 'ro' and 'rw' contradict each other")
    if values["max_multireq"] < values["parallel_count"] and "max_multireq" in seen:
        raise BadOption(
            f"max_multireq ({values['max_multireq']}) must be >= parallel_count ({values['parallel_count']})")
    values["max_multireq"] = max(values["max_multireq"], values["parallel_count"])
    return Options(values)


def _parse_one(opt: Option, given_name: str, raw: str) -> Any:
    try:
        return opt.parse(raw.strip())
    except ValueError as exc:
        reason = str(exc) if "invalid literal" not in str(exc) else "not a valid number"
        raise BadOption(f"bad value for option '{given_name}': {raw!r} ({reason})") from None


def options_markdown() -> str:
    """The option table for docs/configuration.md."""
    rows = ["| option | default | meaning |", "| --- | --- | --- |"]
    for opt in OPTIONS:
        name = f"`{opt.name}{opt.metavar}`"
        if opt.aliases:
            name += " (" + ", ".join(f"`{a}=`" for a in opt.aliases) + ")"
        if opt.switches:
            name += " (flags " + ", ".join(f"`{flag}`" for flag, _, _ in opt.switches) + ")"
        default = "off" if opt.kind == "flag" and not opt.default else (
            "on" if opt.kind == "flag" else ("unset" if opt.default is None else
                                             (oct(opt.default)[2:] if opt.parse is _parse_octal else str(opt.default))))
        if opt.unit == "MB" and opt.default is not None:
            default += " MB"
        help_text = opt.help + (" Env: " + ", ".join(f"`{v}`" for v in opt.env) + "." if opt.env else "")
        rows.append(f"| {name} | {default} | {help_text} |")
    return "\n".join(rows) + "\n"


def options_help() -> str:
    """Short option list for `pailfs mount --help`."""
    return "\n".join(f"{o.name}{o.metavar}: {o.help}" for o in OPTIONS)


CONFIGURATION_HEADER = """# Configuration

Every option below is accepted by `pailfs mount -o`, `mount -t fuse.pailfs -o`
and `/etc/fstab`, and (where it applies) by `pailfs cp/ls/...` and
`pailfs.open_store(url, **options)`. Names and defaults follow ossfs and
s3fs-fuse. Flags take no value (`-o ro`); `-o flag=false` turns one off.
Generic mount(8) flags (`defaults`, `_netdev`, `noauto`, `nosuid`, ...) are
accepted and ignored.

This table is generated from `src/pailfs/config.py`
(`python -m pailfs.config > docs/configuration.md`); a test keeps it in step.

"""

CONFIGURATION_FOOTER = """
## Endpoints

`url=` (or `--endpoint`, env `PAILFS_ENDPOINT`) is `host`, `host:port` or
`scheme://host[:port]`; **without a scheme it is https**, so the endpoints ossfs
and ACK PVs write (`oss-cn-hangzhou.aliyuncs.com`) work as they are.
`addressing=auto` (the default) sends virtual-hosted requests
(`https://bucket.host/key`) to OSS (`*.aliyuncs.com`) and AWS (`*.amazonaws.com`)
hosts and path-style requests (`https://host/bucket/key`) to IP addresses,
`localhost` and every other host; `addressing=virtual` or `=path` forces one
(`use_path_request_style` and `virtual_hosted` are the s3fs/ossfs spellings).
The signing region is `region=` when given, else the one in an OSS or AWS host
name, else `us-east-1`. https is verified against the system CAs plus `ca_file=`
(or `AWS_CA_BUNDLE`); there is no switch to turn verification off. Uploads are
plain signed PUTs, never aws-chunked. Every provider and cloud, with tested
command lines: [clouds.md](clouds.md).

## Credentials

One chain, in this order; the first source that is configured is used, for
mounts, `pailfs cp/ls/...`, the Checkpointer, `pailfs.open_store` and the CSI
plugin alike:

| # | source | credentials |
| --- | --- | --- |
| 1 | `passwd_file=FILE` | ossfs format: `bucket:AK:SK[:TOKEN]` lines for one bucket, or `AK:SK`; mode 0600 or 0400 |
| 2 | `credential_process=CMD` | temporary: the command's AWS JSON (`AccessKeyId`, `SecretAccessKey`, `SessionToken`, `Expiration`), run again before expiry |
| 3 | `ram_role=NAME` / `iam_role=NAME` | temporary: ECS / EC2 instance metadata (`auto`: the instance's role; `metadata_url=` moves the service) |
| 4 | `/etc/passwd-pailfs`, then `~/.passwd-pailfs` | as 1, when the file exists |
| 5 | env `OSS_ACCESS_KEY_ID` / `OSS_ACCESS_KEY_SECRET` (+ `OSS_SESSION_TOKEN`) | static, or an STS token as given |
| 6 | env `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`) | static, or an STS token as given |
| 7 | env `ALIBABA_CLOUD_ROLE_ARN`, `ALIBABA_CLOUD_OIDC_PROVIDER_ARN`, `ALIBABA_CLOUD_OIDC_TOKEN_FILE` (ACK RRSA) | temporary: STS AssumeRoleWithOIDC with the token file |
| 8 | env `AWS_ROLE_ARN`, `AWS_WEB_IDENTITY_TOKEN_FILE` (EKS IRSA) | temporary: STS AssumeRoleWithWebIdentity with the token file |
| 9 | none of these | anonymous requests |

Temporary credentials are fetched again once two thirds of their life has
passed (at most 5 minutes before they expire), so a mount or a training job
that lives for days never remounts. A refresh that fails is logged (without a
secret) and retried while the current credentials still work; only once they
have expired do requests fail, with one line saying so. The STS endpoint is
`sts_endpoint=` (env `PAILFS_STS_ENDPOINT`, `AWS_STS_ENDPOINT`), by default
`sts[.ALIBABA_CLOUD_STS_REGION].aliyuncs.com` for RRSA and
`sts.REGION.amazonaws.com` for IRSA. A credential process runs without a shell
(its words split like sh) and its stderr is never read. Secrets never appear in
logs, in the command line of any process pailfs starts, or in error messages.

## Kernel timeouts follow the stat cache

| options | kernel entry/attr timeout | kernel page cache across opens |
| --- | --- | --- |
| `kernel_cache` | `stat_cache_expire` (forever for -1) | kept |
| default | 1 s (or `stat_cache_expire` if shorter) | kept on `ro` mounts; dropped when the object's ETag changed |
| `max_stat_cache_size=0` | 0: every lookup and getattr asks the store | as above |
"""


def configuration_markdown() -> str:
    return CONFIGURATION_HEADER + options_markdown() + CONFIGURATION_FOOTER


if __name__ == "__main__":  # pragma: no cover - docs generation
    print(configuration_markdown(), end="")
