"""docker-compose.yml, the Dockerfile, the README quickstart and CI agree with the code.

Docker is not available where the tests run, so the compose file is checked as data: its
services, commands and environment against the settings and the CLI.
"""

from __future__ import annotations

import json
import logging
import re
import tomllib
from pathlib import Path

import yaml

from dataengine.cli.main import cli
from dataengine.infra.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
ENGINE_ROLES = ("migrate", "worker", "beat", "flower", "api")


def _setting_env_names() -> set[str]:
    """The variables the engine's settings and every job's own (``JobSettings``) read."""
    from dataengine.engine.jobs import load_jobs
    from dataengine.infra.settings import JobSettings

    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names |= {c for c in getattr(alias, "choices", []) if c.isupper()} or {f"DATAENGINE_{name.upper()}"}
    load_jobs()
    job_settings, found = list(JobSettings.__subclasses__()), []
    while job_settings:
        cls = job_settings.pop()
        found.append(cls)
        job_settings += cls.__subclasses__()
    for cls in found:
        names |= {f"{cls.model_config.get('env_prefix', '')}{name}".upper() for name in cls.model_fields}
    return names


def test_compose_has_every_role_with_the_ordinary_commands():
    assert {"postgres", "redis", *ENGINE_ROLES} <= set(SERVICES)
    assert SERVICES["worker"]["command"][0] == "dataengine-worker"  # celery -A dataengine worker, leaner
    assert SERVICES["beat"]["command"][:4] == ["celery", "-A", "dataengine", "beat"]
    assert SERVICES["flower"]["command"][:4] == ["celery", "-A", "dataengine", "flower"]
    assert SERVICES["migrate"]["command"] == ["dataengine", "migrate"]
    assert SERVICES["api"]["command"][:2] == ["dataengine", "api"]
    commands = {c.name or c.callback.__name__.replace("_", "-") for c in cli.registered_commands}
    assert {"migrate", "fake-llm", "submit", "status", "watch", "demo", "api"} <= commands
    assert "api-keys" in {g.name for g in cli.registered_groups}


def test_the_worker_of_compose_and_of_the_image_is_celery_s_worker_command_and_it_takes_their_options():
    from dataengine.worker.__main__ import PROG, cli_context, worker_command

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts[PROG] == "dataengine.worker.__main__:main"
    image = json.loads(re.search(r"^CMD (\[.*\])$", (ROOT / "Dockerfile").read_text(), re.M).group(1))
    compose = SERVICES["worker"]["command"]
    for command in (image, compose):
        assert command[0] == PROG
        with worker_command().make_context(PROG, command[1:], obj=cli_context()) as ctx:
            assert ctx.params["loglevel"] == logging.INFO, ctx.params
    assert ctx.params["concurrency"] == int(compose[compose.index("--concurrency") + 1])


def test_the_api_listens_where_compose_maps_it_and_its_healthcheck_asks_health():
    api = SERVICES["api"]
    port = api["command"][api["command"].index("--port") + 1]
    assert api["ports"] == [f"127.0.0.1:{port}:{port}"] and api["command"][api["command"].index("--host") + 1] == "0.0.0.0"
    probe = " ".join(api["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port}/health" in probe


def test_flower_in_its_container_listens_for_the_published_port_and_is_probed_without_a_password():
    flower = SERVICES["flower"]
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in flower["command"][4:])
    assert flags["address"] == "0.0.0.0" and flower["ports"] == [f"127.0.0.1:{flags['port']}:{flags['port']}"]
    assert f"http://127.0.0.1:{flags['port']}/healthcheck" in " ".join(flower["healthcheck"]["test"])
    # flowerconfig.py is read from the working directory: the image's, where the Dockerfile copies it.
    assert "conf" not in flags and re.search(r"^WORKDIR /app$", (ROOT / "Dockerfile").read_text(), re.M)


def test_every_engine_role_runs_in_production_unless_told_otherwise():
    # Production is what refuses placeholder secrets, Flower without a password and the API without a key.
    for role in ENGINE_ROLES:
        assert SERVICES[role]["environment"]["DATAENGINE_ENVIRONMENT"] == "${DATAENGINE_ENVIRONMENT:-production}", role


def test_migrations_run_once_before_workers_and_beat_start():
    assert SERVICES["migrate"]["restart"] == "no"
    for role in ("worker", "beat", "flower", "api"):
        depends = SERVICES[role]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["postgres"]["condition"] == depends["redis"]["condition"] == "service_healthy"
    assert "healthcheck" in SERVICES["postgres"] and "healthcheck" in SERVICES["redis"]


def test_engine_environment_names_are_settings_the_code_reads():
    known = _setting_env_names() | {"FLOWER_BASIC_AUTH"}
    for role in ENGINE_ROLES:
        env = SERVICES[role]["environment"]
        assert set(env) <= known, set(env) - known
        assert {"DATABASE_URL", "REDIS_URL"} <= set(env)
        assert env["REDIS_URL"].startswith("redis://redis:") and "@postgres:5432/" in env["DATABASE_URL"]


def test_secrets_are_required_from_the_environment_never_written_in():
    text = (ROOT / "docker-compose.yml").read_text()
    for secret in ("POSTGRES_PASSWORD", "OPENAI_API_KEY", "FLOWER_BASIC_AUTH", "DATA_ENGINE_API_KEY",
                   "DATAENGINE_SESSION_SECRET"):
        assert re.search(rf"\$\{{{secret}:\?", text), f"{secret} must be ${{{secret}:?...}}"
    assert SERVICES["flower"]["ports"] == ["127.0.0.1:5555:5555"]


def test_the_image_carries_everything_the_commands_import():
    dockerfile = (ROOT / "Dockerfile").read_text()
    for part in ("dataengine", "models", "tasks", "alembic", "alembic.ini", "celeryconfig.py", "flowerconfig.py",
                 "pyproject.toml"):
        assert re.search(rf"^COPY .*\b{re.escape(part)}\b", dockerfile, re.M), part


def test_readme_quickstart_is_two_commands_and_ci_runs_the_second():
    readme = (ROOT / "README.md").read_text()
    block = re.match(r"## Quickstart\n+```bash\n(.*?)```", readme, re.S)
    assert block, "README must open with '## Quickstart' and one bash block"
    demo, tests = block.group(1).strip().splitlines()
    assert (ROOT / demo.split()[0]).exists() and (ROOT / tests.split()[0]).exists()
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(rf"^exec {re.escape(tests)}$", ci, re.M)


def test_the_database_image_has_pgvector_and_creates_the_extension_once():
    postgres = SERVICES["postgres"]
    assert postgres["image"].startswith("pgvector/pgvector:")
    mount = next(v for v in postgres["volumes"] if v.endswith(":/docker-entrypoint-initdb.d:ro"))
    scripts = ROOT / mount.split(":")[0]
    assert "CREATE EXTENSION IF NOT EXISTS vector" in "".join(p.read_text() for p in scripts.glob("*.sql"))


def test_every_job_runs_on_the_compose_workers_and_beat_fires_the_refresh():
    from dataengine.infra.settings import job_module_names

    assert sorted(job_module_names()) == ["tasks.knowledge", "tasks.propertyaudit", "tasks.reviewflow"]
    env = SERVICES["beat"]["environment"]
    assert "DATAENGINE_KNOWLEDGE_REFRESH_SCHEDULE" in env and "0 3 * * *" in env["DATAENGINE_KNOWLEDGE_REFRESH_SCHEDULE"]


def test_the_metrics_profile_scrapes_the_api_and_every_worker_where_they_listen():
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    api_port = SERVICES["api"]["command"][SERVICES["api"]["command"].index("--port") + 1]
    assert jobs["dataengine-api"]["static_configs"] == [{"targets": [f"api:{api_port}"]}]
    worker_env = SERVICES["worker"]["environment"]
    assert jobs["dataengine-workers"]["dns_sd_configs"] == [
        {"names": ["worker"], "type": "A", "port": int(worker_env["DATAENGINE_WORKER_METRICS_PORT"])}]
    assert worker_env["DATAENGINE_WORKER_METRICS_HOST"] == "0.0.0.0"  # noqa: S104  inside the compose network
    assert not SERVICES["worker"].get("ports"), "worker metrics stay inside the compose network"
    for name, port in (("prometheus", 9090), ("grafana", 3000)):
        assert SERVICES[name]["profiles"] == ["metrics"]
        assert SERVICES[name]["ports"] == [f"127.0.0.1:{port}:{port}"]
        for volume in SERVICES[name]["volumes"]:
            source = volume.split(":")[0]
            assert not source.startswith("./") or (ROOT / source).exists(), volume
    assert "${GRAFANA_ADMIN_PASSWORD:?" in (ROOT / "docker-compose.yml").read_text()


def test_the_dashboard_asks_only_for_metrics_the_engine_exports():
    import json

    from prometheus_client import REGISTRY

    from dataengine.infra.metrics import metrics
    from dataengine.web.metrics_route import FLEET_FAMILIES, _requests

    metrics(), _requests()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    exported = set(FLEET_FAMILIES)
    for family in REGISTRY.collect():
        exported |= {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "dataengine.json").read_text())
    asked = {name for panel in dashboard["panels"] for target in panel["targets"]
             for name in re.findall(r"\bdataengine_[a-z_]+", target["expr"])}
    assert asked and asked <= exported, asked - exported
    uids = {panel["datasource"]["uid"] for panel in dashboard["panels"]}
    datasources = yaml.safe_load((ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
                                 .read_text())["datasources"]
    assert uids == {d["uid"] for d in datasources}
