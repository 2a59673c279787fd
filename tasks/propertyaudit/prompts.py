"""PropertyAudit's prompts and the schema of its structured evaluation.

The job's stand-in evaluator (``standin.py``) reads these formats back, so the stand-in LLM
server gives evaluations that mean something; a real model just reads them as instructions.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

ANSWER_SYSTEM_PROMPT = (
    "You are a helpful local-search assistant. Answer the user's question the way a search "
    "assistant would: a short ranked list of specific apartment communities with one line "
    "on each, then the sources you relied on."
)

EVAL_SYSTEM_PROMPT = (
    "You audit how visible a property is in an AI assistant's answer. Read the answer and "
    "report whether the property (or one of its aliases) is mentioned, its 1-based rank in "
    "the answer's list, the sentiment toward it, the competing properties named, and the "
    "URLs cited."
)

#: Markers around the answer inside the evaluation prompt.
ANSWER_OPEN = "<<<"
ANSWER_CLOSE = ">>>"


class QueryEvaluation(BaseModel):
    """How one LLM answer treats the audited property (the structured output of the evaluator)."""

    mentioned: bool = Field(description="Whether the property or one of its aliases is named in the answer")
    rank: int | None = Field(description="1-based position of the property in the answer's list, null if absent")
    sentiment: Literal["positive", "neutral", "negative"] | None = Field(
        description="Tone toward the property, null if it is not mentioned"
    )
    competitors: list[str] = Field(description="Other properties named in the answer, in order")
    citations: list[str] = Field(description="URLs the answer cites")


def answer_messages(query: str) -> list[dict[str, str]]:
    """The chat messages that ask the model a query as a person searching would."""
    return [{"role": "system", "content": ANSWER_SYSTEM_PROMPT}, {"role": "user", "content": query}]


def evaluation_messages(
    *, property_name: str, aliases: list[str], city: str | None, answer: str
) -> list[dict[str, str]]:
    """The chat messages that ask the evaluator to score one answer for one property."""
    user = (
        f"Property: {property_name}\n"
        f"Aliases: {', '.join(aliases) if aliases else 'none'}\n"
        f"City: {city or 'unknown'}\n"
        f"Answer:\n{ANSWER_OPEN}\n{answer}\n{ANSWER_CLOSE}"
    )
    return [{"role": "system", "content": EVAL_SYSTEM_PROMPT}, {"role": "user", "content": user}]
