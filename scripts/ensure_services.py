"""Make sure PostgreSQL and Redis answer at DATABASE_URL / REDIS_URL (loopback only).

A server that does not answer is started from the binaries installed on this machine
(Debian's pg_ctlcluster, or initdb/pg_ctl into .dataengine/pg; redis-server); if there are
none, say what to install.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _pg_ok() -> bool:
    url = DATABASE_URL.replace("postgresql+psycopg://", "postgresql://")
    parts = urlsplit(url)
    try:
        psycopg.connect(parts._replace(path="/postgres").geturl(), connect_timeout=3).close()
        return True
    except psycopg.OperationalError:
        return False


def _redis_ok() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_timeout=3).ping())
    except redis.RedisError:
        return False


def _wait(check, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.5)
    return False


def _start_postgres() -> None:
    port = str(urlsplit(DATABASE_URL).port or 5432)
    if shutil.which("pg_ctlcluster") and glob.glob("/etc/postgresql/*/main"):
        version = sorted(os.listdir("/etc/postgresql"))[-1]
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"], check=False)
        return
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    initdb = shutil.which("initdb") or (bins and f"{bins[-1]}/initdb")
    if not initdb:
        return
    pg_ctl = str(Path(initdb).with_name("pg_ctl"))
    data = ROOT / ".dataengine" / "pg"
    if not (data / "PG_VERSION").exists():
        subprocess.run([initdb, "-D", str(data), "-U", "postgres", "--auth=trust"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([pg_ctl, "-D", str(data), "-l", str(data / "server.log"), "-o", f"-p {port} -k /tmp -h 127.0.0.1",
                    "start"], check=False)


def _start_redis() -> None:
    if shutil.which("redis-server"):
        port = str(urlsplit(REDIS_URL).port or 6379)
        subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", port, "--save", "",
                        "--appendonly", "no"], check=False, stdout=subprocess.DEVNULL)


def main() -> int:
    """Check both servers, start what is missing, and explain what could not be fixed."""
    for name, url in (("DATABASE_URL", DATABASE_URL), ("REDIS_URL", REDIS_URL)):
        host = urlsplit(url).hostname
        if host not in LOOPBACK:
            print(f"{name} points at {host}; the demo and tests only use servers on loopback", file=sys.stderr)
            return 1
    failures = []
    if not _pg_ok():
        print("==> PostgreSQL is not answering; starting a local one")
        _start_postgres()
        if not _wait(_pg_ok):
            failures.append("PostgreSQL 13+ on 127.0.0.1:5432 with user postgres (apt-get install postgresql)")
    if not _redis_ok():
        print("==> Redis is not answering; starting a local one")
        _start_redis()
        if not _wait(_redis_ok):
            failures.append("Redis 6+ on 127.0.0.1:6379 (apt-get install redis-server)")
    for failure in failures:
        print(f"cannot reach or start {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
