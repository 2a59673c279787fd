"""Redis behind TLS and a password (``rediss://``, as managed Redis offers it): a worker consumes,
stores results and sweeps over it, and neither password nor key material reaches its log.

The server is a private ``redis-server`` with a TLS port only, its certificate signed by a CA made
for the test with Debian's ``openssl``.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_for
from helpers import create_audit, run_row
from redis_server import REDIS_SERVER, free_port

pytestmark = pytest.mark.timeout(90)
PASSWORD = f"tls-redis-pw-{uuid.uuid4().hex}"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(directory: Path) -> None:
    """A CA, and a certificate for 127.0.0.1 signed by it."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
             "-subj", "/CN=dataengine-test-ca", cwd=directory)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "redis.key", "-out", "redis.csr",
             "-subj", "/CN=127.0.0.1", cwd=directory)
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "redis.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "redis.crt", "-days", "1", "-extfile", "san.ext", cwd=directory)


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server speaking only TLS, with a password: its ``rediss://`` URL."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (Debian's openssl package)")
    certs = tmp_path / "certs"
    certs.mkdir()
    make_certificates(certs)
    port = free_port()
    log = (tmp_path / "redis-tls.log").open("wb")
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
         "--tls-cert-file", str(certs / "redis.crt"), "--tls-key-file", str(certs / "redis.key"),
         "--tls-ca-cert-file", str(certs / "ca.crt"), "--tls-auth-clients", "no", "--requirepass", PASSWORD,
         "--save", "", "--appendonly", "no"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={certs / 'ca.crt'}"
    try:
        import redis

        wait_for(lambda: _pings(redis, url), timeout_s=10, what="the TLS redis-server to answer")
        yield url
    finally:
        proc.kill()
        proc.wait()
        log.close()


def _pings(redis, url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_timeout=1) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


def test_a_worker_works_over_rediss_with_a_password(tls_redis, workers, fake_llm, tmp_path):
    from celery import Celery

    from dataengine.infra.settings import Settings

    worker = workers("a", env={"REDIS_URL": tls_redis})  # no ssl_cert_reqs: the engine requires a valid certificate
    run_id = create_audit(3)
    url = Settings(redis_url=tls_redis).redis_url  # a web app's producer spells it out
    producer = Celery("producer", broker=url, backend=url, set_as_current=False)
    try:
        result = producer.send_task("propertyaudit.run", kwargs={"run_id": str(run_id)})
        assert result.get(timeout=60)["status"] == "completed"
    finally:
        producer.close()
    assert run_row(run_id)["status"] == "completed"
    assert PASSWORD not in worker.log_text()
