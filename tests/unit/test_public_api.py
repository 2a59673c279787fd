"""A job author's API is ``from dataengine import ...``: every public name resolves, and a job (the
three of the product, and the tests' Echo) imports nothing else of the engine."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import dataengine

ROOT = Path(__file__).resolve().parents[2]
#: Where jobs live: each module there may import the engine through its public API only.
JOB_FILES = [*sorted((ROOT / "tasks").rglob("*.py")), ROOT / "tests" / "enginejob.py", ROOT / "tests" / "echojob.py"]


def test_every_public_name_resolves_and_nothing_else_is_offered():
    assert sorted(dataengine.__all__) == sorted(dataengine._PUBLIC)
    for name in dataengine.__all__:
        assert getattr(dataengine, name) is not None, name
    assert dataengine.celery is dataengine.app
    try:
        dataengine.runloop_internals  # noqa: B018  an internal name is not reachable from the package
    except AttributeError as exc:
        assert "runloop_internals" in str(exc)
    else:
        raise AssertionError("an unknown name resolved")


def _engine_imports(path: Path) -> list[str]:
    """The engine modules ``path`` imports other than the package itself (``dataengine.engine.jobs``...)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dataengine."):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} from {node.module}")
        elif isinstance(node, ast.Import):
            found += [f"{path.relative_to(ROOT)}:{node.lineno} import {a.name}" for a in node.names
                      if a.name.startswith("dataengine.")]
    return found


def test_jobs_import_the_engine_through_its_public_api_only():
    assert len(JOB_FILES) > 10
    assert [line for path in JOB_FILES for line in _engine_imports(path)] == []


def test_echo_is_a_whole_job_in_sixty_lines():
    """Tables (run, step, result and a table of its own), spec, step, transient errors and definition."""
    assert len((ROOT / "tests" / "enginejob.py").read_text().splitlines()) <= 60


def _job_words() -> set[str]:
    """What names a job: its key, name and task names, and the tables of its models' module."""
    import sys

    from dataengine.engine.jobs import load_jobs

    words: set[str] = set()
    for job in load_jobs():
        words |= {job.key, job.name, job.task_name, job.submit_task_name}
        module = sys.modules[job.run_model.__module__]
        words |= {v.__table__.name for v in vars(module).values() if hasattr(v, "__table__") and hasattr(v, "__module__")
                  and v.__module__ == module.__name__}
    return words


def test_the_engine_names_no_job():
    words = _job_words()
    assert {"propertyaudit", "geo_runs", "document_chunks", "knowledge.refresh"} <= words  # the test sees them all
    found = [f"{path.relative_to(ROOT)}:{n}: {word}"
             for path in sorted((ROOT / "dataengine").rglob("*")) if path.suffix in (".py", ".html", ".js", ".css", ".lua", ".sql")
             for n, line in enumerate(path.read_text().splitlines(), 1)
             for word in words if re.search(rf"(?<![\w.]){re.escape(word)}(?![\w])", line, re.IGNORECASE)]
    assert found == []
