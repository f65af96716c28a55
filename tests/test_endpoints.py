"""Endpoints as users write them: the forms of `url=`, the addressing style, the
signing region from the host, and the one option behind use_path_request_style /
virtual_hosted. (Requests on real hosts: test_vhost.py, test_tls.py.)"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pailfs.config import parse_options
from pailfs.errors import BadOption
from pailfs.store import open_store
from pailfs.store.endpoint import parse_endpoint


@pytest.mark.parametrize("text, scheme, netloc, virtual, region", [
    # what ossfs users and ACK PVs write: no scheme
    ("oss-cn-hangzhou.aliyuncs.com", "https", "oss-cn-hangzhou.aliyuncs.com", True, "cn-hangzhou"),
    ("oss-cn-beijing-internal.aliyuncs.com", "https", "oss-cn-beijing-internal.aliyuncs.com", True, "cn-beijing"),
    ("https://s3.oss-cn-shanghai.aliyuncs.com", "https", "s3.oss-cn-shanghai.aliyuncs.com", True, "cn-shanghai"),
    ("s3.oss-ap-southeast-1-internal.aliyuncs.com", "https", "s3.oss-ap-southeast-1-internal.aliyuncs.com",
     True, "ap-southeast-1"),
    ("http://oss-cn-hangzhou.aliyuncs.com", "http", "oss-cn-hangzhou.aliyuncs.com", True, "cn-hangzhou"),
    # AWS
    ("s3.us-west-2.amazonaws.com", "https", "s3.us-west-2.amazonaws.com", True, "us-west-2"),
    ("https://s3.dualstack.eu-central-1.amazonaws.com", "https", "s3.dualstack.eu-central-1.amazonaws.com",
     True, "eu-central-1"),
    ("s3-us-west-1.amazonaws.com", "https", "s3-us-west-1.amazonaws.com", True, "us-west-1"),
    ("s3.amazonaws.com", "https", "s3.amazonaws.com", True, "us-east-1"),
    ("s3.cn-north-1.amazonaws.com.cn", "https", "s3.cn-north-1.amazonaws.com.cn", True, "cn-north-1"),
    # self-hosted: path style
    ("http://127.0.0.1:8333", "http", "127.0.0.1:8333", False, "us-east-1"),
    ("127.0.0.1:9000", "https", "127.0.0.1:9000", False, "us-east-1"),
    ("localhost:9000", "https", "localhost:9000", False, "us-east-1"),
    ("http://[::1]:9000", "http", "[::1]:9000", False, "us-east-1"),
    ("minio.internal.example.com:9000", "https", "minio.internal.example.com:9000", False, "us-east-1"),
    ("HTTPS://Minio.Example.com/", "https", "minio.example.com", False, "us-east-1"),
])
def test_endpoint_forms_addressing_and_region(text, scheme, netloc, virtual, region):
    ep = parse_endpoint(text)
    assert (ep.scheme, ep.netloc, ep.virtual_hosted, ep.region) == (scheme, netloc, virtual, region)
    assert ep.url == f"{scheme}://{netloc}"
    bucket_url = ep.bucket_url("tf-train")
    assert bucket_url == (f"{scheme}://tf-train.{netloc}" if virtual else f"{scheme}://{netloc}/tf-train")


def test_forced_addressing_and_explicit_region_win():
    assert parse_endpoint("oss-cn-hangzhou.aliyuncs.com", "path").virtual_hosted is False
    assert parse_endpoint("minio.example.com", "virtual").bucket_url("b") == "https://b.minio.example.com"
    assert parse_endpoint("oss-cn-hangzhou.aliyuncs.com", region="cn-shanghai").region == "cn-shanghai"


@pytest.mark.parametrize("spec, addressing", [
    ("", "auto"),
    ("addressing=path", "path"),
    ("addressing=virtual", "virtual"),
    ("use_path_request_style", "path"),          # s3fs spelling
    ("use_path_request_style=false", "virtual"),
    ("virtual_hosted", "virtual"),
    ("virtual_hosted=false", "path"),
    ("addressing=virtual,use_path_request_style", "path"),  # the last one wins
])
def test_one_addressing_option_and_its_s3fs_ossfs_spellings(spec, addressing):
    assert parse_options([spec], env={}).addressing == addressing


@pytest.mark.parametrize("spec, reason", [
    ("addressing=sideways", "expected auto, virtual or path"),
    ("virtual_hosted=maybe", "expected a boolean"),
])
def test_bad_addressing_values(spec, reason):
    with pytest.raises(BadOption) as caught:
        parse_options([spec], env={})
    assert reason in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("url, reason", [
    ("ftp://host", "scheme must be http or https"),
    ("https://host/some/path", "no path"),
    ("https://user:pw@host", "no path, no user"),
    ("host:notaport", "expected host[:port]"),
    ("https://", "expected host[:port]"),
    ("bad host name", "expected host[:port]"),
    ("http://127.0.0.1:9000", None),  # fine as path style...
])
def test_bad_endpoints_are_one_line(url, reason):
    if reason is None:
        with pytest.raises(BadOption, match="virtual-hosted addressing needs a host name"):
            open_store("s3://bkt", url=url, addressing="virtual")  # ...but bkt.127.0.0.1 cannot resolve
        return
    with pytest.raises(BadOption) as caught:
        open_store("s3://bkt", url=url)
    assert reason in str(caught.value) and "\n" not in str(caught.value)


def test_help_says_no_scheme_means_https():
    out = subprocess.run([sys.executable, "-m", "pailfs", "mount", "--help"], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "200"}, timeout=60).stdout
    assert "without a scheme, https" in " ".join(out.replace("│", " ").split())
    assert "use_path_request_style" in out and "virtual_hosted" in out


def test_cli_bad_endpoint_is_one_line_before_any_request(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pailfs", "ls", "s3://bkt", "--endpoint", "ftp://host"],
                          capture_output=True, text=True, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and "scheme must be http or https" in lines[0], proc.stderr
