"""Lease owner names, unique per process: ``<celery node>/<pid>/<process space>/<nonce>``.

The process space names the machine and pid namespace (boot id and pid-namespace inode on
Linux, else the host name), so a worker can tell a dead process of its own machine from a live
one elsewhere that carries the same node name and pid; the nonce tells apart two processes
that reused one pid.
"""

from __future__ import annotations

import os
import secrets
import socket
from functools import cache


@cache
def process_space() -> str:
    """Where pids mean the same process: this kernel boot and pid namespace (or the host name)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip().replace("-", "")[:12]
        return f"{boot}.{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return socket.gethostname()


@cache
def _nonce(pid: int) -> str:
    return secrets.token_hex(4)


def worker_id(node: str | None) -> str:
    """The lease owner name of this process in Celery node ``node``."""
    return f"{node or 'local'}/{os.getpid()}/{process_space()}/{_nonce(os.getpid())}"


def dead_sibling(owner: str, me: str) -> bool:
    """Whether ``owner`` is a process of this machine and pid namespace that no longer exists
    (a killed pool process): its lease need not be waited out, nothing can still work under it."""
    parts, mine = owner.rsplit("/", 3), me.rsplit("/", 3)
    if len(parts) != 4 or len(mine) != 4 or parts[2] != mine[2] or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    return pid != os.getpid() and not process_exists(pid)


def process_exists(pid: int) -> bool:
    """Whether a process ``pid`` exists in this pid namespace (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
