"""Domain errors of pailfs and the one table that gives each its errno.

Layers raise these; the FUSE front end answers with `errno_of(exc)`, the CLI
prints `str(exc)` on one line. Messages never contain a secret.
"""

from __future__ import annotations

import errno


class PailfsError(Exception):
    """Base of every error pailfs reports to a user."""


# --- user input -----------------------------------------------------------
class BadOption(PailfsError):
    """An unknown option, a bad value, a malformed URL."""


class BadCredentials(PailfsError):
    """Missing credentials, or a passwd file that is unsafe or malformed."""


# --- store ----------------------------------------------------------------
class StoreError(PailfsError):
    """The object store answered with an error not listed below."""


class NotFound(StoreError):
    """No such object (or directory)."""


class NoSuchBucket(StoreError):
    """The bucket does not exist."""


class AccessDenied(StoreError):
    """Wrong credentials or not allowed."""


class StoreUnavailable(StoreError):
    """The endpoint could not be reached or timed out."""


class PreconditionFailed(StoreError):
    """The object changed under us (ETag mismatch)."""


# --- file system ------------------------------------------------------------
class FsError(PailfsError):
    """A file system call that cannot be done."""


class ReadOnly(FsError):
    """Modifying call on a read-only mount."""


class NotADirectory(FsError):
    pass


class IsADirectory(FsError):
    pass


class DirectoryNotEmpty(FsError):
    pass


class AlreadyExists(FsError):
    pass


class NotPermitted(FsError):
    """Refused by policy (e.g. `nodelete`)."""


class NoSpace(FsError):
    pass


class NameTooLong(FsError):
    pass


class InvalidArgument(FsError):
    pass


class CrossDevice(FsError):
    pass


class NotSupported(FsError):
    pass


class TooManyObjects(FsError):
    """A directory rename would copy more objects than `dir_rename_limit`."""


class NoSuchAttribute(FsError):
    """No extended attribute of that name."""


class FileTooLarge(FsError):
    """Larger than the store can hold as one object (S3: 10,000 parts)."""


class MountError(PailfsError):
    """The mount could not be set up (mountpoint, /dev/fuse, fusermount3...)."""


class CheckpointError(PailfsError):
    """A checkpoint could not be saved, found or verified."""


# The one table: domain error -> errno. Subclasses inherit their base's entry;
# the most specific class listed wins.
ERRNO_TABLE: dict[type[BaseException], int] = {
    NotFound: errno.ENOENT,
    NoSuchBucket: errno.ENOENT,
    AccessDenied: errno.EACCES,
    StoreUnavailable: errno.EIO,
    PreconditionFailed: errno.ESTALE,
    StoreError: errno.EIO,
    ReadOnly: errno.EROFS,
    NotADirectory: errno.ENOTDIR,
    IsADirectory: errno.EISDIR,
    DirectoryNotEmpty: errno.ENOTEMPTY,
    AlreadyExists: errno.EEXIST,
    NotPermitted: errno.EPERM,
    NoSpace: errno.ENOSPC,
    NameTooLong: errno.ENAMETOOLONG,
    InvalidArgument: errno.EINVAL,
    CrossDevice: errno.EXDEV,
    NotSupported: errno.EOPNOTSUPP,
    TooManyObjects: errno.EMLINK,
    NoSuchAttribute: errno.ENODATA,
    FileTooLarge: errno.EFBIG,
    FileNotFoundError: errno.ENOENT,
    TimeoutError: errno.EIO,
}


def errno_of(exc: BaseException) -> int:
    """errno for an exception: the table by class (MRO order), OSError's own, else EIO."""
    for cls in type(exc).__mro__:
        code = ERRNO_TABLE.get(cls)
        if code is not None:
            return code
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO
