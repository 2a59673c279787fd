"""PropertyAudit's stand-in evaluator for the stand-in LLM server (``dataengine fake-llm``).

It reads the property and the answer back out of the evaluation prompt and scores the answer
the way a real evaluator model would, so tests, the demo and benchmarks get real summaries.
"""

from __future__ import annotations

import re
from typing import Any

from tasks.propertyaudit.prompts import ANSWER_CLOSE, ANSWER_OPEN


def evaluate_query(prompt: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A ``QueryEvaluation`` read off the property, aliases and answer in an evaluation prompt."""
    header, _, rest = prompt.partition(ANSWER_OPEN)
    answer = rest.rpartition(ANSWER_CLOSE)[0] if ANSWER_CLOSE in rest else rest
    prop = re.search(r"^Property:\s*(.*)$", header, re.M)
    aliases = re.search(r"^Aliases:\s*(.*)$", header, re.M)
    names = [prop.group(1).strip()] if prop else []
    if aliases and aliases.group(1).strip().lower() != "none":
        names += [a.strip() for a in aliases.group(1).split(",") if a.strip()]
    names = [n.lower() for n in names if n]
    listed = re.findall(r"^\s*\d+\.\s+\*\*(.+?)\*\*", answer, re.M)
    ours = [any(n in item.lower() for n in names) for item in listed]
    mentioned = any(n in answer.lower() for n in names)
    return {
        "mentioned": mentioned,
        "rank": ours.index(True) + 1 if True in ours else None,
        "sentiment": "positive" if mentioned else None,
        "competitors": [item for item, is_ours in zip(listed, ours, strict=True) if not is_ours],
        "citations": list(dict.fromkeys(u.rstrip(".") for u in re.findall(r"https?://[^\s,)>\]]+", answer))),
    }


#: The stand-in server's answers, by schema name (``dataengine.testing.standin_llm.load_standins``).
ANSWERS = {"QueryEvaluation": evaluate_query}
