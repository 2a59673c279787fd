"""Giving memory back after a burst of steps (glibc only; elsewhere these do nothing).

A pool process with hundreds of calls in flight allocates from many threads. glibc gives each
thread its own malloc arena (up to eight per core) and keeps what is freed in them: a worker that
once had 512 calls in flight held about twice its idle memory for ever after
(``bench/peers/worker_memory.py``). ``limit_arenas`` caps the arenas when a pool process starts;
``trim`` hands the free pages back to the system when the process's step threads have all ended
(``dataengine.engine.stepthreads``), which happens a second after a burst is over.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import cache
from typing import Any

log = logging.getLogger("dataengine.infra.malloc")

#: ``mallopt`` parameter number of ``M_ARENA_MAX`` (glibc's malloc.h).
M_ARENA_MAX = -8
#: Arenas a pool process may have: its threads share them (they mostly wait on the network).
ARENAS = 2


@cache
def _glibc() -> Any | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018  (glibc has both; musl and macOS do not)
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap this process's malloc arenas (before it starts many threads); False where it cannot."""
    libc = _glibc()
    return bool(libc and libc.mallopt(M_ARENA_MAX, arenas))


def trim() -> bool:
    """Return free heap pages to the system; whether any were."""
    libc = _glibc()
    return bool(libc and libc.malloc_trim(0))
