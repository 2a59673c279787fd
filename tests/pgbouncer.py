"""A real PgBouncer in transaction mode in front of the test PostgreSQL, for the pooler tests.

Debian's ``pgbouncer`` package, started on a free loopback port with a config of its own in a
temporary directory; every database of the server is reachable through it (a ``*`` entry), so
the per-test clones work. PgBouncer refuses to run as root: as root it is started with
``-u postgres`` (the package's system user), so its files must be readable by that user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from sqlalchemy.engine import make_url

#: Where Debian installs it (``/usr/sbin`` is not on every PATH).
CANDIDATES = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")
INSTALL_HINT = "install Debian's pgbouncer (apt-get install pgbouncer; scripts/test.sh does it when run as root)"


def binary() -> str | None:
    """The pgbouncer executable, or None if it is not installed."""
    return shutil.which("pgbouncer") or next((p for p in CANDIDATES if os.access(p, os.X_OK)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgBouncer:
    """One pgbouncer process in transaction mode, forwarding every database to ``server_host:server_port``."""

    def __init__(self, *, server_host: str = "127.0.0.1", server_port: int = 5432, user: str = "postgres") -> None:
        exe = binary()
        if exe is None:
            raise FileNotFoundError(f"pgbouncer is not installed; {INSTALL_HINT}")
        self.exe, self.server_host, self.server_port, self.user = exe, server_host, server_port, user
        self.dir = Path(tempfile.mkdtemp(prefix="de-pgbouncer-"))
        self.dir.chmod(0o755)  # read by the unprivileged user pgbouncer switches to
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "pgbouncer.log"

    def _write_config(self) -> Path:
        auth = self.dir / "userlist.txt"
        auth.write_text(f'"{self.user}" ""\n')  # trust: the user must be listed, the password is not checked
        ini = self.dir / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"* = host={self.server_host} port={self.server_port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {auth}\n"
            "pool_mode = transaction\n"
            # A few hundred clients (workers' pools, the test process) share a small server pool,
            # as in production; per database, so each cloned test database gets its own.
            "max_client_conn = 500\n"
            "default_pool_size = 20\n"
            "ignore_startup_parameters = extra_float_digits\n"
            "log_connections = 0\n"
            "log_disconnections = 0\n"
            "admin_users = postgres\n"
        )
        for f in (auth, ini):
            f.chmod(0o644)
        return ini

    def start(self, *, timeout_s: float = 10.0) -> PgBouncer:
        """Start it and wait until it accepts connections (a new port if the one picked was taken)."""
        for _ in range(3):
            self.port = _free_port()
            ini = self._write_config()
            cmd = [self.exe, str(ini)]
            if os.geteuid() == 0:
                cmd[1:1] = ["-u", pwd.getpwnam(self.user).pw_name]
            log = self.log_path.open("ab")
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
            log.close()
            if self._wait_listening(timeout_s):
                return self
            self.stop(remove=False)
        raise RuntimeError(f"pgbouncer did not start:\n{self.log_text()[-3000:]}")

    def _wait_listening(self, timeout_s: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return True
            except OSError:
                time.sleep(0.05)
        return False

    def url_for(self, url: str) -> str:
        """``url`` (a database on the server) reached through this pgbouncer instead."""
        return make_url(url).set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    def log_text(self) -> str:
        """What pgbouncer logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, *, remove: bool = True) -> None:
        """Stop the process we started (SIGTERM: immediate shutdown) and remove its directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)
