"""What the Containerfile and `make image` claim, checked without building (the
build takes minutes and needs buildah; `make image` runs it). The image's
runtime claim — the plugin and a mount need only the `[csi]` set — is tested for
real in test_extras.py::test_the_plugin_and_its_mounts_need_only_the_csi_extra."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTAINERFILE = (ROOT / "Containerfile").read_text()


def stages() -> list[list[str]]:
    """Instructions per stage (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", CONTAINERFILE)
    result: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            result.append([])
        if result:
            result[-1].append(line)
    return result


def test_the_image_installs_only_the_csi_extra():
    installs = [i for stage in stages() for i in stage if "pip install" in i]
    assert len(installs) == 1
    assert re.search(r"'/src\[csi\]'", installs[0])
    assert not re.search(r"\[(all|demo|bench|server|dev|k8s)", CONTAINERFILE)


def test_the_final_stage_holds_the_venv_and_nothing_of_the_build():
    builder, final = stages()
    assert builder[0].endswith("AS builder")
    assert final[0] == "FROM ${BASE}"
    copies = [i for i in final if i.startswith(("COPY", "ADD", "RUN"))]
    assert copies == ["COPY --from=builder /opt/pailfs /opt/pailfs"]
    env = " ".join(i for i in final if i.startswith("ENV"))
    assert "PATH=/opt/pailfs/bin:" in env


def test_the_base_is_the_one_make_builds_from_debian_and_no_registry_is_named():
    default_base = re.search(r"^ARG BASE=(\S+)", CONTAINERFILE, re.M).group(1)
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(rf"^BASE_IMAGE\s+\?= {re.escape(default_base)}$", makefile, re.M)
    assert default_base.startswith("localhost/")
    assert "debootstrap --variant=minbase" in makefile
    # every FROM is the local base or an earlier stage
    for stage in stages():
        assert stage[0].split()[1] == "${BASE}"


def test_make_image_is_one_command():
    dry = subprocess.run(["make", "-n", "image"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "debootstrap" in dry and "podman import" in dry
    bud = [line for line in dry.splitlines() if line.strip().startswith("buildah bud")]
    assert bud and "-f Containerfile" in dry and "--secret id=ca-bundle" in dry
    test = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "buildah" not in test and "debootstrap" not in test  # not part of `make test`
