"""The engine's named SQL (``dataengine/infra/sql/queries.sql``): what the file says agrees with the models,
and a statement is filled with identifiers only, for any job."""

from __future__ import annotations

import re

import pytest

import models
from dataengine.infra.queries import QUERIES, identifier, job_tables, parse, statement
from models.base import RunStatus

#: A name after FROM, INTO, UPDATE or JOIN that is not a placeholder, a function or a CTE of the file.
_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE|JOIN)\s+([a-z_]+)\b(?!\()")  # unnest(...) is a function
_CTE = re.compile(r"(?:WITH|,|\})\s*([a-z_]+) AS \(")
#: PostgreSQL's own views the statements read.
_CATALOG = {"pg_stat_activity"}


def test_the_file_names_each_statement_once_and_none_is_empty() -> None:
    assert {"checkpoint", "finish_run", "create_run", "beat", "dead_owners", "journal_insert"} <= set(QUERIES)
    assert all(body and not body.startswith("--") for body in QUERIES.values())
    with pytest.raises(ValueError, match="twice"):
        parse("-- name: a\nSELECT 1\n-- name: a\nSELECT 2\n")


def test_a_statement_written_with_a_status_names_a_run_status() -> None:
    statuses = {s.value for s in RunStatus}
    compared = re.compile(r"status(?: AS text\))?\s*(?:=|IN)\s*\(?((?:'\w+'(?:,\s*)?)+)")
    found = {word for body in QUERIES.values() for group in compared.findall(body) for word in re.findall(r"'(\w+)'", group)}
    assert {"running", "queued", "completed"} <= found
    assert found <= statuses, found - statuses


def test_every_fixed_table_the_statements_name_is_a_models_table() -> None:
    tables = set(models.Base.metadata.tables)
    ctes = {cte for body in QUERIES.values() for cte in _CTE.findall(body)}
    named = {t for body in QUERIES.values() for t in _TABLE.findall(body)} - ctes - _CATALOG
    assert {"run_events", "worker_heartbeats", "llm_responses", "llm_costs"} <= named
    assert named <= tables, named - tables


def test_placeholders_are_filled_with_the_jobs_quoted_tables_and_nothing_is_left_open() -> None:
    class Table:
        def __init__(self, name: str) -> None:
            self.name = name

    class OddJob:  # a job whose run table needs quoting; the engine's statements must still be SQL
        runs, steps, results = Table("order"), Table("Steps"), Table("results")

    assert job_tables(OddJob()) == {"runs": '"order"', "steps": '"Steps"', "results": "results"}
    filled = statement("journal_prune", runs=identifier("order"))
    assert 'FROM "order" r' in filled and "{" not in filled
    with pytest.raises(KeyError, match="nothing fills"):
        statement("checkpoint", OddJob())  # the column lists were not given
