"""The OpenAPI document is accurate: schemathesis sends what it describes to a live ``dataengine api``
process and checks every answer against it: status codes, content types and bodies, and never a
500. Every check runs but one: a request the document allows may still be refused with a 422 naming
the field, for rules JSON Schema cannot state (no NUL character in any text, an ``idempotency_key``
field that disagrees with the ``Idempotency-Key`` header). Then it sends what the document forbids
(wrong types, values out of range, missing and extra fields, odd text), every operation with the
key, and the API must answer each without a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from liveapi import live_api
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import positive_data_acceptance

KEY = "schema-test-key-0123456789"
pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]  # a live API process


@pytest.fixture
def api(engine_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """``dataengine api`` on a free port, on the test's own database."""
    with live_api({**engine_env, "DATA_ENGINE_API_KEY": KEY}, log_path=tmp_path / "api.log") as base:
        yield base


def _operations(api: str) -> list:
    schema = schemathesis.openapi.from_url(f"{api}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8, [op.label for op in operations]
    return operations


def test_every_answer_matches_the_openapi_document(api):
    # Driven here rather than with schemathesis' pytest plugin, whose fixture loader does not
    # work with this pytest: each operation gets its own Hypothesis run.
    for operation in _operations(api):

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def answers_as_documented(case):
            case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"}, excluded_checks=[positive_data_acceptance])

        answers_as_documented()


def test_what_the_document_forbids_never_gets_a_5xx(api):
    for operation in _operations(api):

        @given(case=operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
        @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def refused_without_a_server_error(case):
            case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"}, checks=[not_a_server_error])

        try:
            refused_without_a_server_error()
        except Unsatisfiable:
            assert not operation.path_parameters and not operation.query and not operation.body, operation.label
