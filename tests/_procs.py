"""Crash tests: start a command in a child process and SIGKILL it the moment a condition holds."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable


def kill9_when(cmd: list[str], ready: Path | Callable[[], bool], *, env: dict[str, str] | None = None,
               timeout: float = 600, cwd: str | None = None) -> int:
    """Run ``cmd``; as soon as ``ready`` exists (a path) or returns True (a callable), kill it with SIGKILL.

    Fails the test if the command ends on its own first or ``ready`` does not happen within ``timeout`` s.
    Returns the child's exit status (``-SIGKILL``).
    """
    check = ready.exists if isinstance(ready, Path) else ready
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + timeout
        while not check():
            assert proc.poll() is None, f"the command ended before it could be killed: {' '.join(cmd[:6])} …"
            assert time.time() < deadline, f"not ready within {timeout:.0f} s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode
