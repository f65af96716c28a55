"""The FUSE kernel ABI, from the kernel's `include/uapi/linux/fuse.h` (7.38).

Only what pailfs speaks is here: opcodes, flag bits and the request/reply
structs, each as a precompiled little-endian `struct.Struct`. Replies that the
hot path sends are packed in one call: the out header and the body share one
Struct (`ENTRY_REPLY`, `ATTR_REPLY`, `ERROR_REPLY`), so a reply is one
`pack` and one `os.write`.

Sizes are those of protocol minor >= 12 (entry_out 128, attr_out 104,
write_in 40, mknod_in 16); `fuse_init_out` is 64 bytes. The kernel negotiates
down to the minor we announce, so these sizes hold for every minor we accept
(MIN_KERNEL_MINOR and up).
"""

from __future__ import annotations

import struct

KERNEL_VERSION = 7
KERNEL_MINOR_VERSION = 38   # what we announce; the kernel uses min(its, ours)
MIN_KERNEL_MINOR = 31       # older kernels are refused at INIT (EPROTO)
ROOT_ID = 1
MIN_READ_BUFFER = 8192

# --- opcodes -----------------------------------------------------------------
LOOKUP = 1
FORGET = 2            # no reply
GETATTR = 3
SETATTR = 4
READLINK = 5
SYMLINK = 6
MKNOD = 8
MKDIR = 9
UNLINK = 10
RMDIR = 11
RENAME = 12
LINK = 13
OPEN = 14
READ = 15
WRITE = 16
STATFS = 17
RELEASE = 18
FSYNC = 20
SETXATTR = 21
GETXATTR = 22
LISTXATTR = 23
REMOVEXATTR = 24
FLUSH = 25
INIT = 26
OPENDIR = 27
READDIR = 28
RELEASEDIR = 29
FSYNCDIR = 30
GETLK = 31
SETLK = 32
SETLKW = 33
ACCESS = 34
CREATE = 35
INTERRUPT = 36        # no reply
BMAP = 37
DESTROY = 38
IOCTL = 39
POLL = 40
NOTIFY_REPLY = 41
BATCH_FORGET = 42     # no reply
FALLOCATE = 43
READDIRPLUS = 44
RENAME2 = 45
LSEEK = 46
COPY_FILE_RANGE = 47
SETUPMAPPING = 48
REMOVEMAPPING = 49
SYNCFS = 50
TMPFILE = 51
MAX_OPCODE = 63       # handler tables are this long; larger opcodes are unknown

OPCODE_NAMES: dict[int, str] = {
    value: name for name, value in list(globals().items())
    if name.isupper() and isinstance(value, int) and 1 <= value <= 51
    and name not in ("KERNEL_VERSION", "KERNEL_MINOR_VERSION", "MIN_KERNEL_MINOR", "ROOT_ID")
}

# --- fuse_init flags -----------------------------------------------------------
ASYNC_READ = 1 << 0
POSIX_LOCKS = 1 << 1
FILE_OPS = 1 << 2
ATOMIC_O_TRUNC = 1 << 3
EXPORT_SUPPORT = 1 << 4
BIG_WRITES = 1 << 5
DONT_MASK = 1 << 6
SPLICE_WRITE = 1 << 7
SPLICE_MOVE = 1 << 8
SPLICE_READ = 1 << 9
FLOCK_LOCKS = 1 << 10
HAS_IOCTL_DIR = 1 << 11
AUTO_INVAL_DATA = 1 << 12
DO_READDIRPLUS = 1 << 13
READDIRPLUS_AUTO = 1 << 14
ASYNC_DIO = 1 << 15
WRITEBACK_CACHE = 1 << 16
NO_OPEN_SUPPORT = 1 << 17
PARALLEL_DIROPS = 1 << 18
HANDLE_KILLPRIV = 1 << 19
POSIX_ACL = 1 << 20
ABORT_ERROR = 1 << 21
MAX_PAGES = 1 << 22
CACHE_SYMLINKS = 1 << 23
NO_OPENDIR_SUPPORT = 1 << 24
EXPLICIT_INVAL_DATA = 1 << 25
MAP_ALIGNMENT = 1 << 26
SUBMOUNTS = 1 << 27
HANDLE_KILLPRIV_V2 = 1 << 28
SETXATTR_EXT = 1 << 29
INIT_EXT = 1 << 30

# --- open_out.open_flags ---------------------------------------------------------
FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_NONSEEKABLE = 1 << 2
FOPEN_CACHE_DIR = 1 << 3
FOPEN_STREAM = 1 << 4
FOPEN_NOFLUSH = 1 << 5

# --- setattr_in.valid --------------------------------------------------------------
FATTR_MODE = 1 << 0
FATTR_UID = 1 << 1
FATTR_GID = 1 << 2
FATTR_SIZE = 1 << 3
FATTR_ATIME = 1 << 4
FATTR_MTIME = 1 << 5
FATTR_FH = 1 << 6
FATTR_ATIME_NOW = 1 << 7
FATTR_MTIME_NOW = 1 << 8
FATTR_LOCKOWNER = 1 << 9
FATTR_CTIME = 1 << 10
FATTR_KILL_SUIDGID = 1 << 11

GETATTR_FH = 1 << 0
FSYNC_FDATASYNC = 1 << 0
RELEASE_FLUSH = 1 << 0

# --- structs -----------------------------------------------------------------------
# fuse_in_header: len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding
IN_HEADER = struct.Struct("<IIQQIIIHH")
IN_HEADER_SIZE = IN_HEADER.size  # 40
# The first four fields only: what the reader loop needs for every request.
IN_HEADER_HEAD = struct.Struct("<IIQQ")

# fuse_out_header: len, error (negative errno), unique
OUT_HEADER = struct.Struct("<IiQ")
OUT_HEADER_SIZE = OUT_HEADER.size  # 16
ERROR_REPLY = OUT_HEADER  # an error reply is the header alone

# fuse_attr: ino size blocks atime mtime ctime (seconds are s64 in the kernel)
#            atimensec mtimensec ctimensec mode nlink uid gid rdev blksize flags
_ATTR = "QQQqqqIIIIIIIIII"
ATTR = struct.Struct("<" + _ATTR)                               # 88
# fuse_entry_out: nodeid generation entry_valid attr_valid entry_nsec attr_nsec + attr
_ENTRY_OUT = "QQQQII" + _ATTR
ENTRY_OUT = struct.Struct("<" + _ENTRY_OUT)                     # 128
ENTRY_REPLY = struct.Struct("<IiQ" + _ENTRY_OUT)                # 16 + 128
# fuse_attr_out: attr_valid attr_valid_nsec dummy + attr
_ATTR_OUT = "QII" + _ATTR
ATTR_OUT = struct.Struct("<" + _ATTR_OUT)                       # 104
ATTR_REPLY = struct.Struct("<IiQ" + _ATTR_OUT)                  # 16 + 104
# fuse_open_out: fh open_flags padding
OPEN_OUT = struct.Struct("<QII")
OPEN_REPLY = struct.Struct("<IiQ" + "QII")
# CREATE replies entry_out followed by open_out
CREATE_REPLY = struct.Struct("<IiQ" + _ENTRY_OUT + "QII")

# fuse_init_in: major minor max_readahead flags [flags2 unused[11]]
INIT_IN = struct.Struct("<IIII")
INIT_IN_FLAGS2 = struct.Struct("<I")  # at offset 16, when flags has INIT_EXT
# fuse_init_out: major minor max_readahead flags max_background congestion_threshold
#                max_write time_gran max_pages map_alignment flags2 unused[7]
INIT_OUT = struct.Struct("<IIIIHHIIHHI28x")
assert INIT_OUT.size == 64
INIT_OUT_COMPAT_22 = 24  # minors < 23 want only the first 24 bytes

FORGET_IN = struct.Struct("<Q")
BATCH_FORGET_IN = struct.Struct("<II")
FORGET_ONE = struct.Struct("<QQ")
GETATTR_IN = struct.Struct("<IIQ")           # getattr_flags dummy fh
# setattr_in: valid padding fh size lock_owner atime mtime ctime
#             atimensec mtimensec ctimensec mode unused4 uid gid unused5
SETATTR_IN = struct.Struct("<IIQQQqqqIIIIIIII")
assert SETATTR_IN.size == 88
MKNOD_IN = struct.Struct("<IIII")            # mode rdev umask padding
MKDIR_IN = struct.Struct("<II")              # mode umask
RENAME_IN = struct.Struct("<Q")              # newdir
RENAME2_IN = struct.Struct("<QII")           # newdir flags padding
LINK_IN = struct.Struct("<Q")
OPEN_IN = struct.Struct("<II")               # flags open_flags
CREATE_IN = struct.Struct("<IIII")           # flags mode umask open_flags
RELEASE_IN = struct.Struct("<QIIQ")          # fh flags release_flags lock_owner
FLUSH_IN = struct.Struct("<QIIQ")            # fh unused padding lock_owner
READ_IN = struct.Struct("<QQIIQII")          # fh offset size read_flags lock_owner flags padding
WRITE_IN = struct.Struct("<QQIIQII")         # fh offset size write_flags lock_owner flags padding
READ_HEAD = struct.Struct("<QQI")            # fh offset size: the head of read_in and write_in
WRITE_OUT = struct.Struct("<II")
WRITE_REPLY = struct.Struct("<IiQII")
FSYNC_IN = struct.Struct("<QII")             # fh fsync_flags padding
SETXATTR_IN = struct.Struct("<II")           # size flags (compat size: no SETXATTR_EXT)
GETXATTR_IN = struct.Struct("<II")           # size padding
GETXATTR_OUT = struct.Struct("<II")
GETXATTR_REPLY = struct.Struct("<IiQII")
ACCESS_IN = struct.Struct("<II")
INTERRUPT_IN = struct.Struct("<Q")
IOCTL_IN = struct.Struct("<QIIQII")          # fh flags cmd arg in_size out_size
FALLOCATE_IN = struct.Struct("<QQQII")
LSEEK_IN = struct.Struct("<QQII")
# fuse_kstatfs: blocks bfree bavail files ffree bsize namelen frsize padding spare[6]
STATFS_REPLY = struct.Struct("<IiQ" + "QQQQQIIII24x")
assert STATFS_REPLY.size == 16 + 80

# fuse_dirent: ino off namelen type, then the name, padded to 8 bytes
DIRENT = struct.Struct("<QQII")
# fuse_direntplus: entry_out + dirent
DIRENTPLUS = struct.Struct("<" + _ENTRY_OUT + "QQII")
assert DIRENTPLUS.size == 152

# Notifications: an out header with unique 0 and the notify code in `error`.
NOTIFY_INVAL_INODE_CODE = 2
NOTIFY_INVAL_ENTRY_CODE = 3
NOTIFY_INVAL_INODE = struct.Struct("<Qqq")   # ino offset length
NOTIFY_INVAL_ENTRY = struct.Struct("<QII")   # parent namelen flags, then name + NUL
NOTIFY_STORE_CODE = 4
NOTIFY_STORE = struct.Struct("<QQII")        # ino offset size padding, then the bytes


# Zero bytes used to pad dirent names to 8 bytes, by pad length.
PADDING = tuple(b"\0" * i for i in range(8))
