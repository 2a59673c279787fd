"""Knowledge Refresh's own commands: ``dataengine knowledge refresh|sources add|sources list|search``
(the engine adds them under the job's key, from ``Job.cli``)."""

from __future__ import annotations

from typing import Annotated

import typer

from dataengine import DataEngineError, console, enqueue, fail, get_job
from tasks.knowledge.search import list_sources, search_knowledge
from tasks.knowledge.spec import add_sources

knowledge_cli = typer.Typer(no_args_is_help=True, help="Knowledge Refresh: refresh, sources, search.")
sources_cli = typer.Typer(no_args_is_help=True, help="A property's knowledge sources.")
knowledge_cli.add_typer(sources_cli, name="sources")
PropertyOption = Annotated[str, typer.Option("--property", help="The producer's property id")]


@knowledge_cli.command("refresh")
def knowledge_refresh(
    property_id: Annotated[str | None, typer.Option("--property", help="Only this property (default: every one)")] = None,
) -> None:
    """Start a refresh of one property's sources, or of every property that has sources; prints the run ids."""
    job = get_job("knowledge")
    try:
        started = job.start_runs(**({"property_id": property_id} if property_id else {}))
    except DataEngineError as exc:
        raise fail(str(exc)) from None
    for run_id, created in started:
        if created:
            enqueue(job.task_name, {"run_id": str(run_id)})
        print(run_id, "started" if created else "already queued or running")


@sources_cli.command("add")
def knowledge_sources_add(
    property_id: PropertyOption,
    url: Annotated[str | None, typer.Option(help="A page to fetch on every refresh")] = None,
    text: Annotated[str | None, typer.Option(help="A text (with --title; the same title again replaces it)")] = None,
    title: Annotated[str | None, typer.Option(help="The text's title")] = None,
) -> None:
    """Register a source for a property (the next refresh reads it)."""
    source = {k: v for k, v in {"url": url, "text": text, "title": title}.items() if v is not None}
    try:
        add_sources(property_id=property_id, sources=[source])
    except DataEngineError as exc:
        raise fail(str(exc)) from None
    console.print(f"registered for {property_id}: {url or title}", highlight=False)


@sources_cli.command("list")
def knowledge_sources_list(
    property_id: Annotated[str | None, typer.Option("--property", help="Only this property")] = None,
) -> None:
    """The registered sources, one a line (tab-separated): property, source, chunks, last fetch, last error."""
    for s in list_sources(property_id=property_id):
        fetched = f"{s['last_fetched_at']:%Y-%m-%d %H:%M}" if s["last_fetched_at"] else "never fetched"
        source = s["url"] or f"text: {s['title']}"
        print("\t".join([s["property_id"], source, f"{s['chunks']} chunks", fetched, s["last_error"] or ""]).rstrip())


@knowledge_cli.command("search")
def knowledge_search(
    question: Annotated[str, typer.Argument(help="What to look for")],
    property_id: PropertyOption,
    limit: Annotated[int, typer.Option(min=1, max=100, help="How many chunks")] = 5,
) -> None:
    """The property's chunks closest to the question, with their source and cosine similarity."""
    for rank, hit in enumerate(search_knowledge(property_id=property_id, question=question, limit=limit), 1):
        console.print(f"[bold]{rank}.[/bold] {hit.score:.3f}  {hit.url or hit.title} #{hit.position}", highlight=False)
        console.print(f"   {' '.join(hit.content.split())[:300]}", highlight=False)
