"""A command that finds no database (unreachable, missing, not migrated) says so in one line and how to
mend it, with the password hidden; no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

CLI = Path(sys.executable).with_name("dataengine")


def run(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url, "COLUMNS": "300"}
    return subprocess.run([str(CLI), *args], env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def test_a_missing_database_is_named_with_the_way_to_create_it(db_url, tmp_path):
    missing = make_url(db_url).set(database="de_t_no_such_database", password="s3cret-pw")
    spec = tmp_path / "spec.json"
    spec.write_text('{"property": {"name": "Cedar Flats"}, "queries": ["best pools"]}')
    for args in (("status",), ("submit", "propertyaudit", str(spec)), ("runs", "--status", "failed"), ("costs",)):
        done = run(missing.render_as_string(hide_password=False), *args)
        out = done.stdout + done.stderr
        assert done.returncode == 2, out
        assert 'error: cannot use the database at' in out and 'database "de_t_no_such_database" does not exist' in out
        assert "dataengine migrate" in out and "Traceback" not in out and "s3cret-pw" not in out


def test_a_database_without_the_engines_tables_asks_for_a_migration(db_url):
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE geo_runs CASCADE"))
    engine.dispose()
    done = run(db_url, "status")
    out = done.stdout + done.stderr
    assert done.returncode == 2 and "has not been migrated" in out and "run 'dataengine migrate'" in out, out
    assert "Traceback" not in out
