"""`mount.pailfs`: the helper mount(8) runs for `mount -t fuse.pailfs` and /etc/fstab.

mount(8) calls `mount.fuse.pailfs SOURCE MOUNTPOINT [-o OPTS] [-n] [-s] [-v] [-f]`
(`make setup` links /sbin/mount.fuse.pailfs to this script); we translate that
into `pailfs mount SOURCE MOUNTPOINT -o OPTS`.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    positional: list[str] = []
    options: list[str] = []
    foreground = False
    while args:
        arg = args.pop(0)
        if arg == "-o" and args:
            options.append(args.pop(0))
        elif arg.startswith("-o") and len(arg) > 2:
            options.append(arg[2:])
        elif arg == "-f":
            foreground = True
        elif arg in ("-n", "-s", "-v"):
            continue  # no mtab, sloppy, verbose: nothing to do for us
        else:
            positional.append(arg)
    if len(positional) != 2:
        sys.stderr.write("usage: mount.pailfs SOURCE MOUNTPOINT [-o OPTIONS]\n")
        sys.exit(1)
    sys.argv = ["pailfs", "mount", *positional] + [x for spec in options for x in ("-o", spec)] + \
        (["-f"] if foreground else [])
    from pailfs.cli import main as pailfs_main

    pailfs_main()


if __name__ == "__main__":
    main()
