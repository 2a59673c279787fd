"""Lease owner names: ``<celery node>/<pid>``, so a worker can tell its own dead pool processes."""

from __future__ import annotations

import os


def worker_id(node: str | None) -> str:
    """The lease owner name of this process in Celery node ``node``."""
    return f"{node or 'local'}/{os.getpid()}"


def dead_sibling(owner: str, me: str) -> bool:
    """Whether ``owner`` is a process of this same node that no longer exists (a killed pool process).

    Its lease need not be waited out: nothing can still be working under it.
    """
    node, _, pid = owner.rpartition("/")
    if node != me.rpartition("/")[0] or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
