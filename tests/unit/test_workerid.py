"""A worker recognises its own dead pool processes by lease owner name, and nothing else."""

from __future__ import annotations

import os
import subprocess

from dataengine.workerid import dead_sibling, worker_id


def test_only_a_gone_process_of_the_same_node_is_a_dead_sibling():
    gone = subprocess.Popen(["true"])
    gone.wait()
    me = worker_id("a@host")
    assert me == f"a@host/{os.getpid()}"
    assert dead_sibling(f"a@host/{gone.pid}", me)
    assert not dead_sibling(f"b@host/{gone.pid}", me)  # another worker's process: not ours to judge
    assert not dead_sibling(f"a@host/{os.getppid()}", me)  # alive
    assert not dead_sibling(me, me)
    assert not dead_sibling("a@host/not-a-pid", me) and not dead_sibling("garbage", me)
