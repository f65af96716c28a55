"""Credential sources in ossfs order, passwd file safety, and that no message shows a secret."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pailfs.config import parse_options
from pailfs.credentials import Credentials, read_passwd_file, resolve_credentials
from pailfs.errors import BadCredentials
from pailfs.store import open_store

SECRET = "s3cr3t/Value+With=Signs"


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def resolve(bucket, *specs, env=None, files=()):
    return resolve_credentials(bucket, parse_options(list(specs), env={}), env=env or {}, default_files=tuple(files))


def test_bucket_line_wins_over_default_line(tmp_path):
    f = write(tmp_path / "passwd", f"# ossfs format\n\nDEFAULTAK:{SECRET}\n  mybucket : BUCKETAK : other-secret \n")
    assert resolve("mybucket", f"passwd_file={f}") == Credentials("BUCKETAK", "other-secret")
    assert resolve("another", f"passwd_file={f}") == Credentials("DEFAULTAK", SECRET)
    assert resolve("mybucket", f"passwd_file={f}").source == f"{f} (bucket mybucket)"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o700, 0o666])
def test_unsafe_modes_are_refused_with_the_fix(tmp_path, mode):
    f = write(tmp_path / "passwd", f"AK:{SECRET}\n", mode)
    with pytest.raises(BadCredentials) as caught:
        resolve("b", f"passwd_file={f}")
    message = str(caught.value)
    assert f"mode {mode:04o}" in message and f"chmod 600 {f}" in message and SECRET not in message


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_safe_modes_are_accepted(tmp_path, mode):
    f = write(tmp_path / "passwd", f"AK:{SECRET}\n", mode)
    assert resolve("b", f"passwd_file={f}").secret_key == SECRET


@pytest.mark.parametrize("line", [f"only-one-field{SECRET}", f"a:b:c:d:{SECRET}", f"bucket::{SECRET}"])
def test_malformed_lines_name_the_line_not_the_secret(tmp_path, line):
    f = write(tmp_path / "passwd", f"# header\n{line}\n")
    with pytest.raises(BadCredentials) as caught:
        resolve("b", f"passwd_file={f}")
    assert "line 2" in str(caught.value) and SECRET not in str(caught.value)


def test_explicit_file_problems(tmp_path):
    with pytest.raises(BadCredentials, match="does not exist"):
        resolve("b", f"passwd_file={tmp_path / 'missing'}")
    f = write(tmp_path / "passwd", "otherbucket:AK:SK\n")
    with pytest.raises(BadCredentials, match="no line for bucket 'b'"):
        resolve("b", f"passwd_file={f}")
    with pytest.raises(BadCredentials, match="not a regular file"):
        resolve("b", f"passwd_file={tmp_path}")


def test_source_order_files_then_oss_env_then_aws_env(tmp_path):
    env = {"OSS_ACCESS_KEY_ID": "OSSAK", "OSS_ACCESS_KEY_SECRET": "osssk",
           "AWS_ACCESS_KEY_ID": "AWSAK", "AWS_SECRET_ACCESS_KEY": "awssk"}
    etc = write(tmp_path / "etc-passwd", "b:ETCAK:etcsk\n")
    home = write(tmp_path / "home-passwd", "HOMEAK:homesk\n")
    absent = tmp_path / "absent"
    assert resolve("b", env=env, files=(absent, etc, home)).access_key == "ETCAK"
    assert resolve("other", env=env, files=(etc, home)).access_key == "HOMEAK"  # etc has no line for it
    assert resolve("other", env=env, files=(etc,)).access_key == "OSSAK"  # falls through to env
    assert resolve("b", env={k: v for k, v in env.items() if k.startswith("AWS")}).access_key == "AWSAK"
    assert resolve("b", env=env).source == "env OSS_ACCESS_KEY_ID"
    assert resolve("b") is None  # anonymous


def test_half_a_key_pair_is_an_error():
    with pytest.raises(BadCredentials, match="OSS_ACCESS_KEY_ID is set but OSS_ACCESS_KEY_SECRET is not"):
        resolve("b", env={"OSS_ACCESS_KEY_ID": "AK"})
    with pytest.raises(BadCredentials, match="AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not"):
        resolve("b", env={"AWS_SECRET_ACCESS_KEY": SECRET})


def test_an_unsafe_default_file_is_refused_too(tmp_path):
    home = write(tmp_path / "home-passwd", f"AK:{SECRET}\n", 0o644)
    with pytest.raises(BadCredentials, match="mode 0644"):
        resolve("b", env={"AWS_ACCESS_KEY_ID": "A", "AWS_SECRET_ACCESS_KEY": "B"}, files=(home,))


def test_repr_and_str_hide_the_secret():
    cred = Credentials("AKID", SECRET, source="test")
    assert SECRET not in repr(cred) and SECRET not in str(cred) and SECRET not in f"{cred}"
    assert "AKID" in repr(cred)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.from_regex(r"[a-z0-9][a-z0-9-]{1,20}[a-z0-9]", fullmatch=True),
                          st.from_regex(r"[A-Za-z0-9]{4,30}", fullmatch=True),
                          st.from_regex(r"[A-Za-z0-9/+=]{1,40}", fullmatch=True)), min_size=1, max_size=5))
def test_passwd_round_trip(tmp_path_factory, entries):
    path = tmp_path_factory.mktemp("pw") / "passwd"
    write(path, "".join(f"{b}:{ak}:{sk}\n" for b, ak, sk in entries))
    for bucket, ak, sk in entries:
        first = next(e for e in entries if e[0] == bucket)  # the first line for a bucket wins
        assert read_passwd_file(path, bucket) == Credentials(first[1], first[2])


def test_passwd_file_credentials_reach_the_server(s3_env, bucket, tmp_path, monkeypatch):
    f = write(tmp_path / "passwd", f"{bucket}:{s3_env['AWS_ACCESS_KEY_ID']}:{s3_env['AWS_SECRET_ACCESS_KEY']}\n")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)

    async def body():
        store = open_store(f"s3://{bucket}", f"passwd_file={f}")
        try:
            await store.put("k", b"via passwd file")
            return await store.get("k")
        finally:
            await store.close()

    assert asyncio.run(body()) == b"via passwd file"
    assert os.stat(f).st_mode & 0o777 == 0o600
