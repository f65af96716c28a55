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
    # where the option may come from: CSI otherOpts must not name local files
    local_path: bool = False

    @property
    def metavar(self) -> str:
        return "" if self.kind == "flag" else "=" + (self.unit or "VALUE")


OPTIONS: tuple[Option, ...] = (
    Option("url", _text, None, "Endpoint of the object store, e.g. http://127.0.0.1:8333 or https://oss-cn-beijing.aliyuncs.com.",
           env=("PAILFS_ENDPOINT", "URL"), unit="URL"),
    Option("region", _text, "us-east-1", "Signing region (S3 SigV4).", env=("PAILFS_REGION", "AWS_REGION"), unit="NAME"),
    Option("use_path_request_style", _parse_bool, True, "Address buckets as http://host/bucket (path style); off = virtual-hosted style.", kind="flag"),
    Option("virtual_hosted", _parse_bool, False, "Address buckets as http://bucket.host (virtual-hosted style, as OSS and AWS prefer).", kind="flag"),
    Option("passwd_file", _text, None, "Credentials file in ossfs format ('bucket:AK:SK' or 'AK:SK' lines); must be mode 0600 or 0400. "
           "Default: /etc/passwd-pailfs, then ~/.passwd-pailfs; then env OSS_ACCESS_KEY_ID/OSS_ACCESS_KEY_SECRET, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY.",
           unit="FILE", local_path=True),
    Option("ro", _parse_bool, False, "Read-only mount: every modifying call fails with EROFS; enables zero-message opens.", kind="flag"),
    Option("rw", _parse_bool, False, "Read-write mount (the default; accepted for fstab compatibility).", kind="flag"),
    Option("kernel_cache", _parse_bool, False, "Keep the kernel page cache across opens; kernel entry/attr timeouts = stat_cache_expire.", kind="flag"),
    Option("parallel_count", _pos_int, 20, "Concurrent parts when uploading or downloading one large object.", unit="N"),
    Option("max_multireq", _pos_int, 20, "Concurrent metadata requests (HEAD/LIST); must be >= parallel_count.", unit="N"),
    Option("max_stat_cache_size", _nonneg_int, 1000, "Metadata entries cached (LRU); 0 disables the stat cache: every lookup asks the store. "
           "Size it to the files and directories a job uses (about 400 bytes each); a smaller cache costs one HEAD "
           "per lookup of an evicted entry, never a new listing.", unit="N"),
    Option("stat_cache_expire", _expire, 900, "Seconds a cached entry is trusted; -1 = forever.", unit="SECONDS"),
    Option("enable_noobj_cache", _parse_bool, True, "Cache 'no such object' answers (negative cache) like other entries.", kind="flag"),
    Option("uid", _parse_id, None, "Owner uid shown for every file (default: the mounting user).", unit="UID"),
    Option("gid", _parse_id, None, "Owner gid shown for every file (default: the mounting user's group).", unit="GID"),
    Option("umask", _parse_octal, None, "Files and dirs show 0777 & ~umask; unset: 0640 files, 0750 dirs (ossfs).", aliases=("mask",), unit="OCTAL"),
    Option("mp_umask", _parse_octal, None, "umask of the mount point directory itself.", unit="OCTAL"),
    Option("allow_other", _parse_bool, False, "Let other users see the mount (FUSE allow_other).", kind="flag"),
    Option("nonempty", _parse_bool, False, "Allow mounting over a non-empty directory.", kind="flag"),
    Option("use_cache", _text, None, "Directory for the disk data cache (keyed by key + ETag; survives remount).", unit="DIR", local_path=True),
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
    Option("staging_dir", _text, None, "Where writes are staged before upload (rw mounts). Default: a private temp dir.", unit="DIR", local_path=True),
    Option("ensure_diskfree", _nonneg_int, 0, "Keep this much disk free in staging_dir; writes fail with ENOSPC beyond.", unit="MB"),
    Option("max_dirty_data", _pos_int, 5120, "Dirty data of one file that forces an early upload.", unit="MB"),
    Option("dir_rename_limit", _nonneg_int, 10000, "Most objects a directory rename may copy (0 = no directory renames).", unit="N"),
    Option("nodelete", _parse_bool, False, "Refuse unlink, rmdir and overwriting renames with EPERM; new files are still allowed.", kind="flag"),
    Option("debug", _parse_bool, False, "Log every FUSE request (slow).", kind="flag"),
    Option("logfile", _text, None, "Write the mount's log here (default: syslog-less stderr, kept when -f).", unit="FILE", local_path=True),
)

# Generic mount(8) flags that fstab and `mount -t fuse.pailfs` pass along; accepted
# and ignored (the kernel flags among them are applied by mount(2) itself).
GENERIC_MOUNT_FLAGS = frozenset({
    "defaults", "auto", "noauto", "user", "nouser", "users", "_netdev", "nofail",
    "suid", "nosuid", "dev", "nodev", "exec", "noexec", "atime", "noatime",
    "relatime", "norelatime", "strictatime", "sync", "async", "dirsync",
})

_BY_NAME: dict[str, Option] = {}
for _opt in OPTIONS:
    for _n in (_opt.name, *_opt.aliases):
        _BY_NAME[_n] = _opt


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
            if opt.kind == "flag":
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
## Credentials

In this order: the `passwd_file=` option; `/etc/passwd-pailfs`; `~/.passwd-pailfs`
(ossfs format: `bucket:AK:SK` lines for one bucket, or `AK:SK`; the file must be
mode 0600 or 0400); env `OSS_ACCESS_KEY_ID`/`OSS_ACCESS_KEY_SECRET`; env
`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`. Secrets never appear in logs, in
the command line of any process pailfs starts, or in error messages.

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
