"""`pailfs k8s manifests|deploy` (print YAML) and `pailfs csi` (the CSI node plugin)."""

from __future__ import annotations

import logging
import os
import shlex
from typing import Optional

import typer

from pailfs.cli.app import app, need_extra
from pailfs.csi import DEFAULT_MOUNT_TIMEOUT, DEFAULT_STATE_DIR
from pailfs.k8s.manifests import DEFAULT_BUFFER_BUDGET_MB, DEFAULT_MOUNTS_PER_NODE, DEFAULT_OTHER_OPTS, \
    KUBELET_DIR, LIVENESSPROBE_IMAGE, REGISTRAR_IMAGE, DriverSpec, PatternSpec, check_driver, check_pattern, \
    driver_manifests, pattern_manifests, to_yaml

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
    from pailfs.cli.app import fail

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
    try:
        parse_endpoint(url)
    except BadOption as exc:
        raise BadOption(f"--url: {exc}") from None
    try:
        argv = shlex.split(command) if command else []
    except ValueError as exc:
        raise BadOption(f"bad value for --command: {command!r} ({exc})") from None
    spec = PatternSpec(bucket=bucket, url=url, data_path=data_path, checkpoint_prefix=checkpoint_prefix,
                       image=image, namespace=namespace, name=name, other_opts=other_opts,
                       mount_path=mount_path, command=argv, ak_id=ak_id, ak_secret=ak_secret, auth=auth,
                       role_arn=role_arn, oidc_provider_arn=oidc_provider_arn)
    check_pattern(spec)
    need_extra("k8s", "yaml")
    typer.echo(to_yaml(pattern_manifests(spec)), nl=False)


@k8s_app.command()
def deploy(
    image: str = typer.Option("pailfs:latest", "--image", help="Image with pailfs installed (runs `pailfs csi`); "
                                                              "`make image` builds one."),
    namespace: str = typer.Option("kube-system", "--namespace", "-n", help="Namespace of the node DaemonSet."),
    registrar_image: str = typer.Option(REGISTRAR_IMAGE, "--registrar-image",
                                        help="csi-node-driver-registrar sidecar image."),
    livenessprobe_image: str = typer.Option(LIVENESSPROBE_IMAGE, "--livenessprobe-image",
                                            help="livenessprobe sidecar image (serves /healthz from Probe)."),
    kubelet_dir: str = typer.Option(KUBELET_DIR, "--kubelet-dir", help="kubelet's root directory on the nodes."),
    state_dir: str = typer.Option(DEFAULT_STATE_DIR, "--state-dir",
                                  help="Host directory for the plugin's state (credential files, publication "
                                       "records); shared by a plugin and its successor. Prefer a tmpfs."),
    mounts_per_node: int = typer.Option(DEFAULT_MOUNTS_PER_NODE, "--mounts-per-node",
                                        help="Mounts a node is expected to hold: sizes the memory request."),
    max_buffer_memory: int = typer.Option(DEFAULT_BUFFER_BUDGET_MB, "--max-buffer-memory",
                                          help="Read-memory budget of each mount in MB (its default and its "
                                               "upper bound); sizes the memory request."),
) -> None:
    """Print the CSI driver's manifests (CSIDriver, ServiceAccount, node DaemonSet) for kubectl apply -f -."""
    spec = DriverSpec(image=image, namespace=namespace, registrar_image=registrar_image,
                      livenessprobe_image=livenessprobe_image, kubelet_dir=kubelet_dir, state_dir=state_dir,
                      mounts_per_node=mounts_per_node, buffer_budget_mb=max_buffer_memory)
    check_driver(spec)
    need_extra("k8s", "yaml")
    typer.echo(to_yaml(driver_manifests(spec)), nl=False)


@app.command()
def csi(
    endpoint: str = typer.Option("unix:///csi/csi.sock", "--endpoint", help="unix:///path of the gRPC socket."),
    node_id: str = typer.Option(..., "--node-id", help="This node's name (NodeGetInfo node_id)."),
    state_dir: str = typer.Option(DEFAULT_STATE_DIR, "--state-dir",
                                  help="Private directory for credential files and publication records."),
    mount_timeout: float = typer.Option(DEFAULT_MOUNT_TIMEOUT, "--mount-timeout",
                                        help="Seconds a `pailfs mount` may take before the publish fails."),
    max_buffer_memory: Optional[int] = typer.Option(None, "--max-buffer-memory", min=1,
                                                    help="Per-mount read-memory budget in MB: the default of "
                                                         "every volume, and the most one may ask for."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every publish/unpublish."),
    serve_only: bool = typer.Option(False, "--serve-only", hidden=True,
                                    help="Run the gRPC server itself (the supervisor's child)."),
) -> None:
    """Run the CSI node plugin (Identity + Node services) for kubelet, under a supervisor."""
    need_extra("csi", "grpc", "google.protobuf")
    logging.getLogger("pailfs").setLevel(logging.INFO if verbose else logging.WARNING)
    if not serve_only:
        import sys

        from pailfs.csi.supervisor import supervise

        raise typer.Exit(supervise([sys.executable, "-m", "pailfs", *sys.argv[1:], "--serve-only"]))
    from pailfs.csi.node import NodeService  # grpc is imported only for this command
    from pailfs.csi.server import serve

    serve(endpoint, NodeService(node_id, state_dir=state_dir, mount_timeout=mount_timeout,
                                buffer_budget_mb=max_buffer_memory))
