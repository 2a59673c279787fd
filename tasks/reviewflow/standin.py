"""ReviewFlow's stand-in analyst for the stand-in LLM server (``dataengine fake-llm``).

It reads the review (the user message, or each ``Review N:`` block of a group) and answers the way
an analyst model would, from word lists: the same review always gets the same analysis. A review containing ``<<invalid>>`` gets
an answer that does not fit the schema, as a model sometimes gives.
"""

from __future__ import annotations

import re
from typing import Any

POSITIVE = ("great", "love", "excellent", "friendly", "clean", "quiet", "helpful", "recommend", "amazing",
            "spacious", "excelente", "limpio", "amable", "tranquilo")
NEGATIVE = ("dirty", "broken", "rude", "noisy", "loud", "terrible", "leak", "mold", "roach", "pest", "unsafe",
            "worst", "never", "slow", "sucio", "roto", "ruidoso", "nunca")
URGENT = ("leak", "flood", "mold", "no heat", "no hot water", "gas smell", "unsafe", "broken lock", "fire",
          "roach", "fuga", "moho")
TOPICS = {
    "maintenance": ("repair", "maintenance", "broken", "leak", "fix", "heat", "hot water", "roto", "fuga"),
    "noise": ("noise", "noisy", "loud", "ruidoso"),
    "staff": ("staff", "manager", "office", "rude", "friendly", "helpful", "amable"),
    "cleanliness": ("clean", "dirty", "trash", "limpio", "sucio"),
    "parking": ("parking", "garage"),
    "amenities": ("pool", "gym", "amenities", "rooftop"),
    "pests": ("pest", "roach", "mice"),
    "price": ("rent", "price", "fee", "value"),
    "safety": ("unsafe", "lock", "security", "gas smell"),
}
SPANISH = (" el ", " la ", " muy ", " pero ", " es ", "excelente", "departamento")
REPLIES = {
    "en": "Thank you for your review. We are sorry about {what}; our team will follow up with you today.",
    "es": "Gracias por su reseña. Lamentamos lo de {what}; nuestro equipo se comunicará con usted hoy.",
}


def _count(text: str, words: tuple[str, ...]) -> int:
    return sum(len(re.findall(rf"\b{re.escape(w)}", text)) for w in words)


def analyze_review(prompt: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A ``ReviewAnalysis`` of the review in ``prompt``."""
    text = f" {prompt.lower()} "
    if "<<invalid>>" in text:
        return {"sentiment_score": 7, "sentiment_label": "ecstatic", "topics": "everything"}
    pos, neg = _count(text, POSITIVE), _count(text, NEGATIVE)
    score = round((pos - neg) / max(pos + neg, 1), 2)
    label = "mixed" if pos and neg and abs(score) < 0.5 else (
        "positive" if score > 0.25 else "negative" if score < -0.25 else "neutral")
    urgent = any(w in text for w in URGENT)
    topics = [t for t, words in TOPICS.items() if _count(text, words)][:5] or ["general"]
    language = "es" if any(w in text for w in SPANISH) else "en"
    needs_reply = urgent or label in ("negative", "mixed")
    return {
        "sentiment_score": score,
        "sentiment_label": label,
        "topics": topics,
        "urgency": "high" if urgent else "medium" if label == "negative" else "low",
        "needs_reply": needs_reply,
        "suggested_reply": REPLIES[language].format(what=topics[0]) if needs_reply else None,
        "language": language,
    }


def analyze_group(prompt: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A ``ReviewGroupAnalysis``: each ``Review N:`` block of ``prompt`` analysed, with its number."""
    parts = re.split(r"^Review (\d+)(?: \(\d of 5 stars\))?:\n", prompt, flags=re.M)
    blocks = [(int(parts[i]), parts[i + 1].strip()) for i in range(1, len(parts) - 1, 2)]
    return {"analyses": [{"number": n, **analyze_review(text, schema)} for n, text in blocks]}


#: The stand-in server's answers, by schema name (``dataengine.testing.standin_llm.load_standins``).
ANSWERS = {"ReviewAnalysis": analyze_review, "ReviewGroupAnalysis": analyze_group}
