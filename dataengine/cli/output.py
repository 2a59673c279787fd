"""What every ``dataengine`` command prints through: the console, and the way a command fails."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

console = Console()


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` (as text: brackets in it are not markup) and give the exit to raise."""
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    return typer.Exit(code=2)
