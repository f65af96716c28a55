"""Protection against accidental deletion: bucket versioning and undelete, on SeaweedFS."""

from __future__ import annotations

from mounts import get_object, pailfs, put_objects


def test_versioning_on_then_undelete_after_delete_and_overwrite(bucket, s3_env):
    url = f"s3://{bucket}"
    assert pailfs("versioning", "status", url, check=True).stdout.decode().strip() == "versioning: Off"
    assert "Enabled" in pailfs("versioning", "on", url, check=True).stdout.decode()
    put_objects(url, {"model.ckpt": b"good weights"})
    pailfs("rm", f"{url}/model.ckpt", check=True)
    assert get_object(url, "model.ckpt") is None
    out = pailfs("undelete", f"{url}/model.ckpt", check=True).stdout.decode()
    assert "restored" in out
    assert get_object(url, "model.ckpt") == b"good weights"
    put_objects(url, {"model.ckpt": b"bad overwrite"})
    pailfs("undelete", f"{url}/model.ckpt", check=True)
    assert get_object(url, "model.ckpt") == b"good weights"


def test_undelete_without_versions_is_one_clear_error(bucket, s3_env):
    proc = pailfs("undelete", f"s3://{bucket}/never-existed")
    assert proc.returncode != 0
    err = proc.stderr.decode().strip()
    assert len(err.splitlines()) == 1 and "no versions" in err


def test_bad_versioning_action(bucket, s3_env):
    proc = pailfs("versioning", "maybe", f"s3://{bucket}")
    assert proc.returncode != 0 and "use on, off or status" in proc.stderr.decode()
