"""Where access keys come from, in ossfs order.

1. option `passwd_file=FILE`;
2. the default files `/etc/passwd-pailfs`, then `~/.passwd-pailfs`, when they exist;
3. env `OSS_ACCESS_KEY_ID` / `OSS_ACCESS_KEY_SECRET`;
4. env `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.

A passwd file holds `bucket:AK:SK` lines (used for that bucket) and at most one
`AK:SK` line (any bucket); `#` comments and blank lines are ignored. Like
s3fs/ossfs, a file others could read is refused: its mode must be 0600 or 0400.
Nothing here ever formats a secret (or a line that holds one) into a message.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Mapping

from pailfs.config import Options
from pailfs.errors import BadCredentials
from pailfs.store.s3api import Credentials

__all__ = ["Credentials", "DEFAULT_PASSWD_FILES", "read_passwd_file", "resolve_credentials"]

DEFAULT_PASSWD_FILES = (Path("/etc/passwd-pailfs"), Path("~/.passwd-pailfs"))
SAFE_MODES = (0o600, 0o400)
ENV_PAIRS = (("OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET"),
             ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))


def read_passwd_file(path: str | Path, bucket: str | None) -> Credentials | None:
    """The pair for `bucket` from an ossfs-format file (bucket line first, then the
    default line), or None when the file has neither. BadCredentials if unsafe or malformed."""
    path = Path(path).expanduser()
    try:
        st = path.stat()
    except FileNotFoundError:
        raise BadCredentials(f"passwd file {path} does not exist") from None
    except OSError as exc:
        raise BadCredentials(f"cannot read passwd file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise BadCredentials(f"passwd file {path} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode not in SAFE_MODES:
        raise BadCredentials(f"passwd file {path} has mode {mode:04o}; it must be 0600 or 0400 "
                             f"so that other users cannot read it (run: chmod 600 {path})")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadCredentials(f"cannot read passwd file {path}: {type(exc).__name__}") from None

    default: Credentials | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split(":")]
        # never echo the line: it holds a secret
        if len(fields) not in (2, 3) or not all(fields):
            raise BadCredentials(f"{path} line {lineno}: expected 'bucket:ACCESS_KEY:SECRET' or 'ACCESS_KEY:SECRET'")
        if len(fields) == 3:
            if bucket is not None and fields[0] == bucket:
                return Credentials(fields[1], fields[2], source=f"{path} (bucket {bucket})")
        elif default is None:
            default = Credentials(fields[0], fields[1], source=str(path))
    return default


def resolve_credentials(bucket: str | None, options: Options,
                        env: Mapping[str, str] | None = None,
                        default_files: tuple[Path, ...] = DEFAULT_PASSWD_FILES) -> Credentials | None:
    """The credentials for `bucket`, or None (anonymous requests) when no source has any."""
    env = os.environ if env is None else env
    explicit = options.values.get("passwd_file")
    if explicit:
        found = read_passwd_file(explicit, bucket)
        if found is None:
            raise BadCredentials(f"passwd file {Path(explicit).expanduser()} has no line for bucket "
                                 f"'{bucket}' and no default 'ACCESS_KEY:SECRET' line")
        return found
    for candidate in default_files:
        candidate = candidate.expanduser()
        if candidate.exists():
            found = read_passwd_file(candidate, bucket)
            if found is not None:
                return found
    for key_var, secret_var in ENV_PAIRS:
        key, secret = env.get(key_var), env.get(secret_var)
        if key and secret:
            return Credentials(key, secret, source=f"env {key_var}")
        if key or secret:
            missing = secret_var if key else key_var
            raise BadCredentials(f"{key_var if key else secret_var} is set but {missing} is not")
    return None
