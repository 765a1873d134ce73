"""Finding and killing Ray's worker processes by their titles, as an operator's kill -9 would."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path


def processes_titled(prefix: str) -> list[int]:
    """Pids whose title (Ray sets it: `ray::CaptionWorker.caption_shard`) starts with prefix."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith(prefix):
            found.append(int(entry.name))
    return found


class KillOnce(threading.Thread):
    """Kill -9 the first process titled `prefix` once `when()` holds; `killed` is its pid."""

    def __init__(self, prefix: str, when=lambda: True, timeout: float = 120.0):
        super().__init__(daemon=True)
        self.prefix, self.when, self.timeout = prefix, when, timeout
        self.killed: int | None = None

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            pids = processes_titled(self.prefix) if self.when() else []
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                self.killed = pids[0]
                return
            time.sleep(0.05)
