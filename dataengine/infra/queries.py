"""The engine's SQL written as text: named statements in ``sql/queries.sql``, read once, and how a
statement is filled in for a job.

A statement is looked up by name (:func:`statement`). Its ``{placeholders}`` are filled with SQL the
engine makes itself, never with a value (values are bound parameters): a job's tables (``{runs}``,
``{steps}``, ``{results}``, quoted identifiers from the job registry, :func:`job_tables`), and parts
the caller passes (a column list generated from a model, a CTE name, another fragment of the file).
Callers that run a statement often build it once per job (``functools.cache``), so filling costs
nothing on the checkpoint path.

Why a ``.sql`` file and not constants in Python: the claim, checkpoint, beat and sweep statements
read as SQL, whole, with their comments, in one place, as procrastinate's ``sql/queries.sql`` does;
and no SQL is built with f-strings anywhere else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any, Protocol

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql


class JobTables(Protocol):
    """What filling a statement needs of a job (``dataengine.engine.jobs.Job``): its three tables. A protocol,
    so that this module, which the LLM journal and ledger use too, imports nothing of the engine."""

    @property
    def runs(self) -> Table: ...

    @property
    def steps(self) -> Table: ...

    @property
    def results(self) -> Table: ...

#: A statement's header in the file: ``-- name: claim_run``, then its comment lines.
_HEADER = re.compile(r"^-- name: ([a-z0-9_]+)\n(?:--.*\n)*", re.MULTILINE)
#: A placeholder: a lower-case name in braces (``'{}'``, an empty array literal, is not one).
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
_PREPARER = postgresql.dialect().identifier_preparer


def parse(text: str) -> dict[str, str]:
    """Name -> statement of a queries file (what precedes the first header is the file's own comment)."""
    parts = _HEADER.split(text)
    names, bodies = parts[1::2], [body.strip() for body in parts[2::2]]
    if len(set(names)) != len(names):
        raise ValueError(f"a query name is used twice in queries.sql: {sorted(n for n in names if names.count(n) > 1)}")
    return dict(zip(names, bodies, strict=True))


#: Every named statement and fragment of ``sql/queries.sql``.
QUERIES: dict[str, str] = parse(resources.files("dataengine.infra").joinpath("sql", "queries.sql").read_text("utf-8"))


def identifier(name: str) -> str:
    """``name`` quoted as PostgreSQL needs it (as it is when it needs no quotes: ``echo_runs``; ``"order"``)."""
    return _PREPARER.quote(name)


@cache
def job_tables(job: JobTables) -> Mapping[str, str]:
    """The job's own tables as placeholders name them, quoted: ``runs``, ``steps``, ``results``."""
    return {"runs": identifier(job.runs.name), "steps": identifier(job.steps.name),
            "results": identifier(job.results.name)}


def statement(name: str, job: JobTables | None = None, /, **parts: str) -> str:
    """The statement ``name`` with its placeholders filled: ``job``'s tables, and ``parts`` (SQL the
    engine generated, or an identifier already passed through :func:`identifier`). A placeholder left
    unfilled is an error, not SQL with braces in it."""
    fill = {**(job_tables(job) if job is not None else {}), **parts}

    def part(match: re.Match[str]) -> str:
        try:
            return fill[match.group(1)]
        except KeyError:
            raise KeyError(f"query {name!r}: nothing fills {{{match.group(1)}}}") from None

    return _PLACEHOLDER.sub(part, QUERIES[name])


def column_list(columns: Sequence[Any]) -> str:
    """The columns' names, quoted, comma-separated (an INSERT's column list)."""
    return ", ".join(identifier(c.name) for c in columns)


def _default_sql(column: Any) -> str:
    """A column's server default as DDL renders it (a string default quoted, an expression as is)."""
    dialect = postgresql.dialect()
    return dialect.ddl_compiler(dialect, None).get_column_default_string(column)


def json_rows_sql(columns: Sequence[Any]) -> tuple[str, str]:
    """SQL reading rows of ``columns`` from a JSON array ``x`` (``jsonb_to_recordset(...) AS x(<types>)``):
    (the record's column types, the select list). A key missing from a row's JSON arrives as NULL: it
    falls back to the column's server default."""
    types = ", ".join(f"{identifier(c.name)} {c.type.compile(dialect=postgresql.dialect())}" for c in columns)
    values = ", ".join(
        f"COALESCE(x.{identifier(c.name)}, {_default_sql(c)})" if c.server_default is not None
        else f"x.{identifier(c.name)}"
        for c in columns
    )
    return types, values
