"""A worker recognises dead processes of its own machine by lease owner name, and nothing else."""

from __future__ import annotations

import os
import subprocess

from dataengine.infra.workerid import dead_sibling, process_space, worker_id


def _owner(node: str, pid: int, space: str | None = None, nonce: str = "0bad") -> str:
    return f"{node}/{pid}/{space or process_space()}/{nonce}"


def test_owner_names_are_unique_per_process_and_say_where_it_runs():
    me = worker_id("a@host")
    node, pid, space, nonce = me.rsplit("/", 3)
    assert (node, int(pid), space) == ("a@host", os.getpid(), process_space())
    assert len(nonce) == 8 and worker_id("a@host") == me


def test_only_a_gone_process_of_the_same_machine_is_a_dead_sibling():
    gone = subprocess.Popen(["true"])
    gone.wait()
    me = worker_id("a@host")
    assert dead_sibling(_owner("a@host", gone.pid), me)
    assert dead_sibling(_owner("b@host", gone.pid), me)  # another worker on this machine: just as dead
    assert not dead_sibling(_owner("a@host", gone.pid, space="elsewhere.1"), me)  # same name, other machine
    assert not dead_sibling(_owner("a@host", os.getppid()), me)  # alive
    assert not dead_sibling(me, me)
    assert not dead_sibling("a@host/not-a-pid/x/y", me) and not dead_sibling("garbage", me)
    assert not dead_sibling(f"a@host/{gone.pid}", me)  # the old format names no machine: not ours to judge
