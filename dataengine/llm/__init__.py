"""The provider's door: the calls a step makes (``calls``: ``chat``, ``parse``, ``embed``), the fleet's rate
limits (``limits``, with its Lua scripts), the response journal, the cost ledger and its writer, budgets, and
workspaces that pay with their own keys (``workspaces``, ``keyring``).

A job reaches it as ``from dataengine import llm`` and calls ``llm.chat``, ``llm.parse`` or ``llm.embed``; those
load on first use, so importing a module of this folder imports no ``openai``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dataengine.llm.calls import Usage, chat, embed, parse

__all__ = ["Usage", "chat", "embed", "parse"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'dataengine.llm' has no attribute {name!r}")
    from dataengine.llm import calls

    return getattr(calls, name)
