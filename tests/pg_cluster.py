"""A private PostgreSQL cluster (``initdb`` + ``pg_ctl``) on a loopback port of its own, for tests
that restart or stop the database server itself.

The machine's own server is never touched: this one lives in a temporary directory and is
started, restarted (``fast``: every connection dropped, as in a failover or an upgrade) and
stopped by the test that owns it. ``initdb`` refuses to run as root: as root, the cluster's
processes run as the ``postgres`` system user, as Debian's own clusters do.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from redis_server import free_port

INSTALL_HINT = "install Debian's postgresql package (it brings initdb and pg_ctl)"


def bindir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are (Debian keeps them off PATH), the newest version first."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]), reverse=True)
    return Path(candidates[0]).parent if candidates else None


class PgCluster:
    """One PostgreSQL server on ``127.0.0.1:port`` with trust authentication for ``postgres``."""

    def __init__(self) -> None:
        bin_ = bindir()
        if bin_ is None:
            raise FileNotFoundError(f"initdb is not installed; {INSTALL_HINT}")
        self.bin = bin_
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="de-pgcluster-"))
        self.data = self.dir / "data"
        self.log_path = self.dir / "postgres.log"
        self._user = "postgres" if os.geteuid() == 0 else None
        if self._user:
            self.dir.chmod(0o755)
            os.chown(self.dir, pwd.getpwnam(self._user).pw_uid, -1)

    def url(self, database: str = "postgres") -> str:
        """``postgresql+psycopg://postgres@127.0.0.1:<port>/<database>``."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout_s: float = 60) -> None:
        proc = subprocess.run([str(self.bin / args[0]), *args[1:]], user=self._user, capture_output=True, text=True,
                              timeout=timeout_s, stdin=subprocess.DEVNULL, start_new_session=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n{self.log_text()}")

    def _ctl(self, action: str, *extra: str) -> None:
        self._run("pg_ctl", action, "-D", str(self.data), "-l", str(self.log_path), "-w", "-t", "60", *extra)

    def start(self) -> PgCluster:
        """initdb (the first time), then start the server and wait until it accepts connections."""
        if not self.data.exists():
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8",
                      "--locale=C")
            with (self.data / "postgresql.conf").open("a") as conf:
                conf.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = ''\n"
                           "fsync = off\nmax_connections = 200\n")
        self._ctl("start")
        return self

    def restart(self) -> None:
        """Restart in ``fast`` mode: every session is ended, as a failover or an upgrade does."""
        self._ctl("restart", "-m", "fast")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast`` or ``immediate``: a crash, recovered from WAL at the next start)."""
        self._ctl("stop", "-m", mode)

    def running(self) -> bool:
        """Whether the server process is up."""
        return (self.data / "postmaster.pid").exists()

    def log_text(self) -> str:
        """What the server logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Block until a connection succeeds."""
        import psycopg

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                                connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def destroy(self) -> None:
        """Stop the server if it runs and remove its files."""
        if self.running():
            try:
                self.stop("immediate")
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.destroy()
