"""`pailfs csi` as a container's PID 1: a small supervisor around the gRPC server.

In a container the plugin is PID 1 of its own PID namespace, and the mount
daemons live in that namespace too. So this process

* reaps every child: the daemons it adopts when the gRPC server dies, and any
  other orphan (PR_SET_CHILD_SUBREAPER outside a PID namespace);
* restarts the gRPC server when it crashes, with a backoff (1 s doubling to 30 s,
  reset after a minute of health); the mounts are not touched;
* never exits while mounts live when it is PID 1: the kernel kills every process
  of a PID namespace when its PID 1 exits. On SIGTERM it stops the gRPC server and
  waits until the last daemon has gone — handed over to the next plugin, or
  unmounted — so an upgrade (maxSurge) loses nothing. A pod deleted without a
  successor ends when kubelet's grace period runs out (SIGKILL), with its mounts.

It is single-threaded and waits for signals with sigtimedwait: no handlers run
between a fork and an exec.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import time
import uuid
from typing import Sequence

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
HEALTHY_AFTER = 60.0   # a server that ran this long starts the backoff afresh
SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _prctl(option: int, value: int) -> None:
    _libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0)


class Supervisor:
    def __init__(self, server_argv: Sequence[str]) -> None:
        self.server_argv = list(server_argv)
        self.pid1 = os.getpid() == 1
        self.instance = uuid.uuid4().hex
        self.server: subprocess.Popen | None = None
        self.started_at = 0.0
        self.backoff = BACKOFF_FIRST
        self.restart_at: float | None = None
        self.stopping = False
        self.waiting_logged = False

    def run(self) -> int:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        self._start_server()
        while True:
            self._reap()
            if self.stopping and self.server is None and (not self.pid1 or not self._has_children()):
                log.warning("pailfs CSI supervisor exiting: no mount left to keep")
                return 0
            if not self.stopping and self.server is None and self.restart_at is not None \
                    and time.monotonic() >= self.restart_at:
                self._start_server()
            timeout = 5.0
            if self.restart_at is not None and not self.stopping:
                timeout = max(0.0, min(timeout, self.restart_at - time.monotonic()))
            info = signal.sigtimedwait(SIGNALS, timeout)
            if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT) and not self.stopping:
                self.stopping = True
                log.warning("pailfs CSI supervisor: signal %d, stopping the gRPC server", info.si_signo)
                if self.server is not None:
                    self.server.send_signal(signal.SIGTERM)

    def _start_server(self) -> None:
        def in_child() -> None:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
            _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # the server never outlives its supervisor

        # every server this supervisor starts is one plugin instance: its mounts are not
        # taken over again when a crashed server is restarted
        env = dict(os.environ, PAILFS_CSI_INSTANCE=self.instance)
        self.server = subprocess.Popen(self.server_argv, preexec_fn=in_child, stdin=subprocess.DEVNULL, env=env)
        self.started_at = time.monotonic()
        self.restart_at = None

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.server is not None and pid == self.server.pid:
                self.server.returncode = os.waitstatus_to_exitcode(status)
                self._server_exited(self.server.returncode)

    def _server_exited(self, code: int) -> None:
        self.server = None
        if self.stopping:
            return
        if time.monotonic() - self.started_at >= HEALTHY_AFTER:
            self.backoff = BACKOFF_FIRST
        log.error("pailfs CSI gRPC server exited with status %d; restarting it in %gs (mounts are kept)",
                  code, self.backoff)
        self.restart_at = time.monotonic() + self.backoff
        self.backoff = min(self.backoff * 2, BACKOFF_MAX)

    def _has_children(self) -> bool:
        try:
            os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return False
        if not self.waiting_logged:
            log.warning("pailfs CSI supervisor: mounts still live; waiting for them to be taken over or unmounted")
            self.waiting_logged = True
        return True


def supervise(server_argv: Sequence[str]) -> int:
    return Supervisor(server_argv).run()
