"""``dataengine workspaces add|list|set-key|set-budget|rotate-key``: workspaces that pay the provider with their own key.

A provider key is read from standard input, or asked for without echo on a terminal: never from an
argument, which would sit in the shell's history and in ``ps``. No command prints a key; ``list``
shows its last characters at most.
"""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from typing import Annotated, Any

import typer

from dataengine.cli.output import console, fail
from dataengine.infra.errors import DataEngineError

workspaces_cli = typer.Typer(no_args_is_help=True, help="Workspaces: each run of one uses its own provider key.")
IdArgument = Annotated[str, typer.Argument(help="The workspace's id, as runs name it (workspace_id)")]


def _read_key() -> str:
    """The provider key: asked for without echo on a terminal, else the first line of standard input."""
    key = typer.prompt("Provider API key", hide_input=True) if sys.stdin.isatty() else sys.stdin.readline()
    if not key.strip():
        raise fail("no provider key: pipe it in (dataengine workspaces add ID < keyfile), never as an argument")
    return key.strip()


def _models(pairs: list[str]) -> dict[str, str]:
    models = {}
    for pair in pairs:
        purpose, sep, model = pair.partition("=")
        if not sep:
            raise fail(f"--model {pair!r}: give it as chat=MODEL, eval=MODEL or embedding=MODEL")
        models[purpose.strip()] = model
    return models


def _limits(rpm: float | None, tpm: float | None, model_limits: str | None) -> dict[str, Any]:
    try:
        models = json.loads(model_limits) if model_limits else {}
    except json.JSONDecodeError as exc:
        raise fail(f"--model-limits is not JSON: {exc}") from None
    return {"rpm": rpm, "tpm": tpm, "models": models}


@workspaces_cli.command("add")
def add(
    workspace_id: IdArgument,
    name: Annotated[str | None, typer.Option(help="What it is called (default: its id)")] = None,
    base_url: Annotated[str | None, typer.Option(help="Its provider's OpenAI-compatible URL (default: OPENAI_BASE_URL)")] = None,
    daily_budget_usd: Annotated[float | None, typer.Option(min=0, help="What its runs may spend per day (UTC), USD")] = None,
    model: Annotated[list[str] | None, typer.Option(
        help="A model its runs use when their spec names none: chat=MODEL, eval=MODEL, embedding=MODEL (repeat)")] = None,
    rpm: Annotated[float | None, typer.Option(min=0, help="Its requests per minute, for every model")] = None,
    tpm: Annotated[float | None, typer.Option(min=0, help="Its tokens per minute, for every model")] = None,
    model_limits: Annotated[str | None, typer.Option(
        help='Per model, as JSON: {"gpt-4o": {"rpm": 500, "tpm": 30000}}')] = None,
    engine_key: Annotated[bool, typer.Option(
        "--engine-key", help="No key of its own: its runs use OPENAI_API_KEY and share the engine's limits fairly")] = False,
) -> None:
    """Create a workspace; its provider key is read from standard input (or asked for) and stored encrypted,
    unless it uses the engine's (``--engine-key``)."""
    from dataengine.llm.workspaces import add_workspace

    models, limits = _models(model or []), _limits(rpm, tpm, model_limits)
    key = None if engine_key else _read_key()
    try:
        add_workspace(workspace_id=workspace_id, name=name or workspace_id, api_key=key, base_url=base_url,
                      models=models, rate_limits=limits,
                      daily_budget_usd=None if daily_budget_usd is None else Decimal(str(daily_budget_usd)))
    except DataEngineError as exc:
        raise fail(str(exc)) from None
    whose = "the engine's key, sharing its limits with the other workspaces on it" if key is None else "its own key"
    console.print(f"workspace {workspace_id!r} added; its runs use {whose}", highlight=False)


@workspaces_cli.command("list")
def list_(as_json: Annotated[bool, typer.Option("--json", help="Print them as JSON")] = False) -> None:
    """The workspaces, one a line: id, name, key (its last characters), base URL, models, budget, limits."""
    from dataengine.llm.workspaces import list_workspaces

    try:
        found = list_workspaces()
    except DataEngineError as exc:
        raise fail(str(exc)) from None
    if as_json:
        print(json.dumps([vars(w) for w in found], default=str, indent=2))
        return
    for w in found:
        models = ",".join(f"{k}={v}" for k, v in sorted(w.models.items())) or "default models"
        budget = f"${w.daily_budget_usd.normalize():f}/day" if w.daily_budget_usd is not None else "no daily budget"
        limits = json.dumps(w.rate_limits) if w.rate_limits else "no rate limits"
        print("\t".join([w.id, w.name, f"key {w.key_hint} set {w.key_updated_at:%Y-%m-%d %H:%M}",
                         w.base_url or "OPENAI_BASE_URL", models, budget, limits]))


@workspaces_cli.command("set-key")
def set_key(workspace_id: IdArgument) -> None:
    """Replace a workspace's provider key (read from standard input or asked for); workers use it within seconds."""
    from dataengine.llm import workspaces

    key = _read_key()
    try:
        workspaces.set_key(workspace_id=workspace_id, api_key=key)
    except DataEngineError as exc:
        raise fail(str(exc)) from None
    console.print(f"workspace {workspace_id!r} has a new key; workers use it within "
                  f"{workspaces.LOOKUP_TTL_S:.0f} s", highlight=False)


@workspaces_cli.command("set-budget")
def set_budget(
    workspace_id: IdArgument,
    daily_budget_usd: Annotated[str, typer.Argument(help="USD per day (UTC), or 'none' to remove it")],
) -> None:
    """Raise, lower or remove what a workspace's runs may spend per day; runs it paused go on once under it."""
    from dataengine.llm import workspaces

    amount = None if daily_budget_usd.strip().lower() == "none" else daily_budget_usd
    try:
        workspaces.set_daily_budget(workspace_id=workspace_id, daily_budget_usd=amount)
    except DataEngineError as exc:
        raise fail(str(exc)) from None
    what = "no daily budget" if amount is None else f"a daily budget of ${amount}"
    console.print(f"workspace {workspace_id!r} has {what}; its paused runs go on within "
                  f"{workspaces.LOOKUP_TTL_S:.0f} s plus DATAENGINE_BUDGET_RECHECK_S if today's spend allows",
                  highlight=False)


@workspaces_cli.command("rotate-key")
def rotate_key() -> None:
    """Re-encrypt every workspace's key under the first key of DATAENGINE_ENCRYPTION_KEY; the others may then go."""
    from dataengine.llm.workspaces import rotate_keys

    try:
        count = rotate_keys()
    except DataEngineError as exc:
        raise fail(str(exc)) from None
    console.print(f"{count} workspace key(s) re-encrypted under the first key of DATAENGINE_ENCRYPTION_KEY; "
                  "the other keys in it may now be removed", highlight=False)
