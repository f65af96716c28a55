"""`pailfs k8s manifests|deploy` (print YAML) and `pailfs csi` (the CSI node plugin)."""

from __future__ import annotations

import logging
import os
import shlex
from typing import Optional

import typer

from pailfs.cli.app import app, fail
from pailfs.csi import DEFAULT_MOUNT_TIMEOUT, DEFAULT_STATE_DIR
from pailfs.k8s.manifests import DEFAULT_OTHER_OPTS, REGISTRAR_IMAGE, PatternSpec, driver_manifests, \
    pattern_manifests, to_yaml

k8s_app = typer.Typer(help="Kubernetes manifests: the read-only data PV/PVC + SDK Job pattern, and the CSI driver.",
                      no_args_is_help=True)
app.add_typer(k8s_app, name="k8s")


@k8s_app.command()
def manifests(
    bucket: str = typer.Option(..., "--bucket", help="Bucket holding the data set and the checkpoints."),
    url: str = typer.Option(..., "--url", help="Object store endpoint, e.g. https://oss-cn-beijing.aliyuncs.com."),
    data_path: str = typer.Option(..., "--data-path", help="Data set prefix in the bucket, e.g. /tf-train/train/data."),
    checkpoint_prefix: str = typer.Option(..., "--checkpoint-prefix",
                                          help="Prefix the job writes checkpoints under (env CHECKPOINT_PREFIX)."),
    image: str = typer.Option(..., "--image", help="Container image of the training job."),
    namespace: str = typer.Option("default", "--namespace", "-n", help="Namespace of the Secret, PVC and Job."),
    name: str = typer.Option("tf-train", "--name", help="Prefix of every object's name."),
    other_opts: str = typer.Option(DEFAULT_OTHER_OPTS, "--other-opts",
                                   help="pailfs -o options of the read-only data mount."),
    mount_path: str = typer.Option("/mnt/data", "--mount-path", help="Where the data set appears in the job's pod."),
    command: Optional[str] = typer.Option(None, "--command",
                                          help="Job command line, e.g. 'python train.py' (default: the image's)."),
    from_env: bool = typer.Option(False, "--from-env",
                                  help="Fill the Secret from OSS_ACCESS_KEY_ID/OSS_ACCESS_KEY_SECRET "
                                       "instead of placeholders."),
    auth: str = typer.Option("secret", "--auth",
                             help="Credentials: secret (an access key Secret), irsa (EKS) or rrsa (ACK): "
                                  "the pod's service account token, exchanged at STS (docs/clouds.md)."),
    role_arn: str = typer.Option("", "--role-arn", help="Role of --auth irsa/rrsa."),
    oidc_provider_arn: str = typer.Option("", "--oidc-provider-arn", help="OIDC provider ARN of --auth rrsa."),
) -> None:
    """Print a Secret (or ServiceAccount), a ReadOnlyMany PV and PVC for the data set, and a Job using them."""

    if auth not in ("secret", "irsa", "rrsa"):
        raise fail(f"--auth must be secret, irsa or rrsa, not {auth!r}")
    if auth != "secret" and (not role_arn or from_env):
        raise fail(f"--auth {auth} needs --role-arn (and takes no --from-env: there is no key)")
    if auth == "rrsa" and not oidc_provider_arn:
        raise fail("--auth rrsa needs --oidc-provider-arn (acs:ram::UID:oidc-provider/NAME)")
    ak_id = ak_secret = None
    if from_env:
        ak_id, ak_secret = os.environ.get("OSS_ACCESS_KEY_ID"), os.environ.get("OSS_ACCESS_KEY_SECRET")
        if not ak_id or not ak_secret:
            raise fail("--from-env needs OSS_ACCESS_KEY_ID and OSS_ACCESS_KEY_SECRET in the environment")
    from pailfs.errors import BadOption
    from pailfs.store.endpoint import parse_endpoint
    from pailfs.store.url import check_bucket

    check_bucket(bucket, f"s3://{bucket}")  # bad input is one line here, not a Pod that never mounts
    parse_endpoint(url)
    try:
        argv = shlex.split(command) if command else []
    except ValueError as exc:
        raise BadOption(f"bad value for --command: {command!r} ({exc})") from None
    spec = PatternSpec(bucket=bucket, url=url, data_path=data_path, checkpoint_prefix=checkpoint_prefix,
                       image=image, namespace=namespace, name=name, other_opts=other_opts,
                       mount_path=mount_path, command=argv, ak_id=ak_id, ak_secret=ak_secret, auth=auth,
                       role_arn=role_arn, oidc_provider_arn=oidc_provider_arn)
    typer.echo(to_yaml(pattern_manifests(spec)), nl=False)


@k8s_app.command()
def deploy(
    image: str = typer.Option("pailfs:latest", "--image", help="Image with pailfs installed (runs `pailfs csi`)."),
    namespace: str = typer.Option("kube-system", "--namespace", "-n", help="Namespace of the node DaemonSet."),
    registrar_image: str = typer.Option(REGISTRAR_IMAGE, "--registrar-image",
                                        help="csi-node-driver-registrar sidecar image."),
) -> None:
    """Print the CSI driver's manifests (CSIDriver, ServiceAccount, node DaemonSet) for kubectl apply -f -."""
    typer.echo(to_yaml(driver_manifests(image, namespace, registrar_image)), nl=False)


@app.command()
def csi(
    endpoint: str = typer.Option("unix:///csi/csi.sock", "--endpoint", help="unix:///path of the gRPC socket."),
    node_id: str = typer.Option(..., "--node-id", help="This node's name (NodeGetInfo node_id)."),
    state_dir: str = typer.Option(DEFAULT_STATE_DIR, "--state-dir",
                                  help="Private directory for the per-volume credential files."),
    mount_timeout: float = typer.Option(DEFAULT_MOUNT_TIMEOUT, "--mount-timeout",
                                        help="Seconds a `pailfs mount` may take before the publish fails."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every publish/unpublish."),
) -> None:
    """Run the CSI node plugin (Identity + Node services) for kubelet."""
    from pailfs.csi.server import serve  # grpc is imported only for this command

    logging.getLogger("pailfs").setLevel(logging.INFO if verbose else logging.WARNING)
    serve(endpoint, node_id, state_dir=state_dir, mount_timeout=mount_timeout)
