"""Log lines of a mount daemon that writes into someone else's log (`--log-tag`):
the CSI plugin starts its mounts with its own stderr, so `kubectl logs` shows
why a pod's read failed.

Every line carries the tag (the volume id), a flood is cut to a steady rate with
a count of what was dropped, and the access key pair is scrubbed from every line
as a last line of defence (nothing in pailfs formats a secret into a message).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Callable, Iterable, TextIO

RATE = 5.0    # lines per second, sustained
BURST = 50    # lines at once after a quiet spell


class TaggedHandler(logging.Handler):
    """Writes `<time> <level> <tag> <logger>: <message>` lines, rate-limited and scrubbed."""

    def __init__(self, tag: str, secrets: Iterable[str] = (), stream: TextIO | None = None,
                 rate: float = RATE, burst: int = BURST, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.tag = tag
        self.secrets = [s for s in secrets if s]
        self.stream = stream if stream is not None else sys.stderr
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = float(burst)
        self.last = clock()
        self.suppressed = 0
        self._guard = threading.Lock()
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(tag)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            with self._guard:
                now = self.clock()
                self.tokens = min(float(self.burst), self.tokens + (now - self.last) * self.rate)
                self.last = now
                if self.tokens < 1:
                    self.suppressed += 1
                    return
                self.tokens -= 1
                dropped, self.suppressed = self.suppressed, 0
            record.tag = self.tag
            text = self.format(record)
            for secret in self.secrets:
                text = text.replace(secret, "***")
            lines = text.splitlines() or [""]
            out = []
            if dropped:
                out.append(f"{self.tag}: {dropped} log lines suppressed (more than {self.rate:g}/s)")
            out.append(lines[0])
            out += [f"{self.tag}   {line}" for line in lines[1:]]
            self.stream.write("\n".join(out) + "\n")
            self.stream.flush()
        except Exception:  # noqa: BLE001 - logging must never take the daemon down
            self.handleError(record)


def configure(tag: str, secrets: Iterable[str] = ()) -> TaggedHandler:
    """Route every log record of this process through one TaggedHandler on stderr."""
    root = logging.getLogger()
    handler = TaggedHandler(tag, secrets)
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    return handler
