"""Start and stop real Celery worker and beat processes (for the demo, tests and benchmarks).

Each process gets a session of its own, so it and its pool children can be signalled as a
group, and only the processes started here are ever signalled.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


def celery_command() -> list[str]:
    """``celery`` from this interpreter's environment."""
    exe = Path(sys.executable).with_name("celery")
    return [str(exe)] if exe.exists() else [shutil.which("celery") or "celery"]


def worker_command(cwd: Path | None = None, *, ordinary: bool = False) -> list[str]:
    """The lean launcher (``python -m dataengine.worker``); or the ordinary ``celery -A dataengine worker``, when
    asked or for a checkout (``cwd``, an older engine a benchmark compares) that has no launcher."""
    if not ordinary and (cwd is None or (cwd / "dataengine" / "worker" / "__main__.py").exists()):
        return [sys.executable, "-m", "dataengine.worker"]
    return [*celery_command(), "-A", "dataengine", "worker"]


@dataclass
class CeleryProcess:
    """A worker or beat we started: its main pid, its log, and how to signal it."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        """The main process id."""
        return self.proc.pid

    def children(self) -> list[int]:
        """Pids of the pool processes (Linux ``/proc``)."""
        try:
            return [int(p) for p in Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            return []

    def log_text(self) -> str:
        """Everything the process has logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout_s: float = 30.0, marker: str = "ready.") -> None:
        """Block until the log shows ``marker`` (Celery's worker prints ``ready.``)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if marker in self.log_text():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout_s}s:\n{self.log_text()[-3000:]}")

    def kill_main(self) -> None:
        """SIGKILL the main process only, as the OOM killer or a lost machine would."""
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait()

    def signal_group(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the main process and its pool children."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def freeze(self, timeout_s: float = 5.0) -> None:
        """SIGSTOP the group and return once every process in it has stopped: a kill() returns before
        the signal takes effect, and a process still running on the other core may log meanwhile."""
        self.signal_group(signal.SIGSTOP)
        deadline = time.monotonic() + timeout_s
        while not all(_stopped(pid) for pid in [self.pid, *self.children()]):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not stop within {timeout_s}s of SIGSTOP")
            time.sleep(0.01)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL the group if it does not go in time."""
        if self.proc.poll() is None:
            self.signal_group(signal.SIGCONT)
            self.signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        self.signal_group(signal.SIGKILL)  # pool children left behind, if any
        if self.proc.poll() is None:
            self.proc.wait()
        self._log.close()


def _stopped(pid: int) -> bool:
    """Whether the process is stopped by a signal, or gone (Linux ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rpartition(")")[2].split()[0] in ("T", "t", "Z", "X")


def start_celery(
    name: str,
    args: list[str],
    *,
    env: dict[str, str],
    log_dir: Path,
    cwd: Path | None = None,
) -> CeleryProcess:
    """Run ``celery -A dataengine <args>`` in a new session, logging to ``log_dir/<name>.log``."""
    return _start(name, [*celery_command(), "-A", "dataengine", *args], env=env, log_dir=log_dir, cwd=cwd)


def _start(name: str, argv: list[str], *, env: dict[str, str], log_dir: Path, cwd: Path | None) -> CeleryProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(  # noqa: S603  a fixed argv of our own (no shell); env carries the settings
        argv,
        env={**os.environ, **env, "DATAENGINE_DIE_WITH_PARENT": "1"},
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return CeleryProcess(name=name, proc=proc, log_path=log_path, _log=log)


def start_worker(
    name: str, *, env: dict[str, str], log_dir: Path, concurrency: int = 1, loglevel: str = "INFO",
    cwd: Path | None = None, ordinary: bool = False,
) -> CeleryProcess:
    """A prefork worker named ``name@<host>`` with ``concurrency`` pool processes (``ordinary``: see
    ``worker_command``)."""
    args = ["--pool", "prefork", "-c", str(concurrency), "-n", f"{name}@%h", "--loglevel", loglevel,
            "--without-gossip", "--without-mingle"]
    return _start(name, [*worker_command(cwd, ordinary=ordinary), *args], env=env, log_dir=log_dir, cwd=cwd)


def start_beat(name: str, *, env: dict[str, str], log_dir: Path) -> CeleryProcess:
    """celery beat (redbeat scheduler; it also runs the recovery sweeper)."""
    return start_celery(name, ["beat", "--loglevel", "INFO"], env=env, log_dir=log_dir)
