"""Real tools on a real read-write mount: tar, git, cp -a, rsync -a (issue 16).

Each round trip is judged by what the tool itself reports (tar's --diff, git
status/fsck, rsync's itemized dry run) and by a field-by-field comparison of
the trees: type, mode, owner, size, mtime to the nanosecond, symlink targets,
bytes, and user xattrs where the tool carries them. Every remount is a fresh
process with empty caches, so what is compared was read back from the bucket.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from mounts import mounted

OPTS = "kernel_cache,max_stat_cache_size=10000,umask=022"
BASE_NS = 1_400_000_000_000_000_000


def build_tree(root: Path, dirs: int = 24, files_per_dir: int = 3, xattrs: bool = False) -> None:
    """Nested directories with files of odd modes, sizes and sub-second times, a symlink
    per directory, and directory times set last (as tar and rsync restore them)."""
    made = [root]
    root.mkdir()
    for i in range(dirs):
        parent = made[i // 3]  # a tree three wide and a few levels deep
        d = parent / f"dir{i:02d}"
        d.mkdir()
        made.append(d)
        for j in range(files_per_dir):
            f = d / f"file{j}.{('txt', 'bin', 'json')[j % 3]}"
            f.write_bytes(os.urandom(37 * i + 1000 * j + 1))
            os.chmod(f, (0o644, 0o600, 0o755)[j % 3])
            if xattrs and j == 0:
                os.setxattr(f, "user.origin", f"file {i}/{j}".encode())
            os.utime(f, ns=(BASE_NS + i * 10**9 + j, BASE_NS + i * 10**9 + 123_456_789 + j))
        os.symlink("file0.txt", d / "link")
        os.utime(d / "link", ns=(BASE_NS, BASE_NS + 5), follow_symlinks=False)
    for n, d in enumerate(reversed(made)):
        os.chmod(d, (0o755, 0o750, 0o700)[n % 3])
        os.utime(d, ns=(BASE_NS + n, BASE_NS + 987_654_321 + n))


def snapshot(root: Path, xattrs: bool = False) -> dict[str, tuple]:
    """Everything a round trip must keep, per relative path (root's own times excluded)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = os.lstat(path)
            rel = str(path.relative_to(root))
            kind = stat.S_IFMT(st.st_mode)
            data: object = None
            if stat.S_ISREG(st.st_mode):
                data = path.read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                data = os.readlink(path)
            extra = ()
            if xattrs and stat.S_ISREG(st.st_mode):
                extra = tuple(sorted((n, os.getxattr(path, n)) for n in os.listxattr(path) if n.startswith("user.")))
            out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                        st.st_size if kind != stat.S_IFDIR else 0, st.st_mtime_ns, data, extra)
    return out


def diff(want: dict, got: dict) -> list[str]:
    problems = [f"missing {k}" for k in want if k not in got] + [f"extra {k}" for k in got if k not in want]
    for key in want.keys() & got.keys():
        if want[key] != got[key]:
            fields = ("type", "mode", "uid", "gid", "size", "mtime_ns", "content", "xattrs")
            problems += [f"{key}: {f} {a!r:.60} != {b!r:.60}" for f, a, b in zip(fields, want[key], got[key]) if a != b]
    return sorted(problems)


def run(*args: str, cwd: Path | None = None, env: dict | None = None) -> str:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, env=env, timeout=300)
    assert proc.returncode == 0, f"{' '.join(args)}: {proc.stderr.decode()}{proc.stdout.decode()}"
    return proc.stdout.decode()


@pytest.fixture
def remount(bucket, s3_env, tmp_path):
    """remount(): a fresh mount of the test's bucket with OPTS (a context manager)."""
    count = [0]

    def mount():
        count[0] += 1
        return mounted(bucket, tmp_path / f"mnt{count[0]}", OPTS)

    return mount


def test_tar_x_then_remount_then_tar_d(remount, tmp_path):
    src = tmp_path / "src"
    build_tree(src)
    archive = tmp_path / "tree.tar"
    run("tar", "--format=posix", "-C", str(src), "-cf", str(archive), ".")  # posix: times to the ns
    with remount() as mnt:
        (mnt / "x").mkdir()
        run("tar", "-C", str(mnt / "x"), "-xpf", str(archive))
    with remount() as mnt:
        out = run("tar", "-C", str(mnt / "x"), "--diff", "-f", str(archive))
        assert out == ""
        assert diff(snapshot(src), snapshot(mnt / "x")) == []


def test_git_commit_same_size_edit_fsck_gc(remount, tmp_path):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@e", "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1"}
    with remount() as mnt:
        repo = mnt / "repo"
        run("git", "init", "-q", str(repo), env=env)
        for i in range(20):
            (repo / f"f{i}.txt").write_text(f"line {i}\n" * 10)
        (repo / "sub").mkdir()
        (repo / "sub/code.py").write_text("print('v1')\n")
        run("git", "add", "-A", cwd=repo, env=env)
        run("git", "commit", "-q", "-m", "first", cwd=repo, env=env)
        # an edit much later than the commit (git compares stat data; a file changed in the
        # second its index entry was written is compared by content instead)
        for path in [*repo.glob("*.txt"), repo / "sub/code.py"]:
            os.utime(path, ns=(BASE_NS, BASE_NS))
        run("git", "update-index", "--refresh", "-q", cwd=repo, env=env)
        assert run("git", "status", "--porcelain", cwd=repo, env=env) == ""
        size = os.stat(repo / "sub/code.py").st_size
        (repo / "sub/code.py").write_text("print('v2')\n")  # the same size: only mtime tells
        assert os.stat(repo / "sub/code.py").st_size == size
        assert run("git", "status", "--porcelain", cwd=repo, env=env) == " M sub/code.py\n"
        run("git", "commit", "-q", "-am", "edit", cwd=repo, env=env)
        assert run("git", "show", "--name-only", "--format=", "HEAD", cwd=repo, env=env) == "sub/code.py\n"
        assert run("git", "status", "--porcelain", cwd=repo, env=env) == ""
        run("git", "fsck", "--strict", cwd=repo, env=env)
        run("git", "gc", "-q", "--aggressive", "--prune=now", cwd=repo, env=env)
        run("git", "fsck", "--strict", cwd=repo, env=env)
    with remount() as mnt:
        repo = mnt / "repo"
        assert run("git", "status", "--porcelain", cwd=repo, env=env) == ""
        assert run("git", "log", "--format=%s", cwd=repo, env=env) == "edit\nfirst\n"
        assert run("git", "show", "HEAD:sub/code.py", cwd=repo, env=env) == "print('v2')\n"
        run("git", "fsck", "--strict", cwd=repo, env=env)


def test_cp_a_round_trip(remount, tmp_path):
    src = tmp_path / "src"
    build_tree(src, xattrs=True)
    back = tmp_path / "back"
    with remount() as mnt:
        run("cp", "-a", str(src), str(mnt / "copy"))
    with remount() as mnt:
        assert diff(snapshot(src, xattrs=True), snapshot(mnt / "copy", xattrs=True)) == []
        run("cp", "-a", str(mnt / "copy"), str(back))
    assert diff(snapshot(src, xattrs=True), snapshot(back, xattrs=True)) == []


def test_rsync_a_round_trip(remount, tmp_path):
    src = tmp_path / "src"
    build_tree(src)
    back = tmp_path / "back"
    with remount() as mnt:
        run("rsync", "-a", f"{src}/", f"{mnt / 'r'}/")
    with remount() as mnt:
        changes = run("rsync", "-a", "--dry-run", "--itemize-changes", f"{src}/", f"{mnt / 'r'}/")
        assert changes == ""  # nothing differs: sizes, times, modes, owners, links
        assert diff(snapshot(src), snapshot(mnt / "r")) == []
        run("rsync", "-a", f"{mnt / 'r'}/", f"{back}/")
    assert diff(snapshot(src), snapshot(back)) == []
