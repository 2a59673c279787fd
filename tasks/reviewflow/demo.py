"""ReviewFlow's part of ``dataengine demo``: distinct resident reviews (the same on every demo), the
spec they make, and how the run's summary reads."""

from __future__ import annotations

from typing import Any

from dataengine import JobDemo
from tasks.reviewflow.step import GROUP_SIZE

PROPERTY = {"name": "The Monarch at Riverside", "city": "Austin"}
REVIEWS = (
    ("Love the rooftop pool and the staff at the front office are always friendly.", 5),
    ("There is a leak under the kitchen sink and mold on the wall; nobody came to fix it.", 1),
    ("The neighbours are loud every night and the hallway is dirty.", 2),
    ("El departamento es muy limpio y el personal es amable.", 5),
    ("Parking is fine but the rent went up again this year.", 3),
    ("The gym is great, quiet and clean, I recommend it.", 4),
    ("My heater is broken, no heat for three days in this cold.", 1),
    ("Spacious units with a great view of the lake.", 5),
)


def demo_reviews(n: int) -> list[tuple[str, int]]:
    """``n`` distinct resident reviews with their ratings, the same on every demo."""
    return [(f"{text} (unit {101 + i})", rating) for i, (text, rating) in
            ((i, REVIEWS[i % len(REVIEWS)]) for i in range(n))]


def asked_within(answered: dict[str, int], text: str) -> int:
    """Short reviews share calls: a review counts in every answered prompt that holds it."""
    return sum(n for prompt, n in answered.items() if text in prompt)


def result_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """The batch summary as the demo's result table shows it."""
    return [
        ("Sentiment", ", ".join(f"{label} {n}" for label, n in summary["sentiment"].items())),
        ("Top topics", ", ".join(f"{t['topic']} ({t['reviews']})" for t in summary["top_topics"])),
        ("Urgent, need a reply", f"{summary['urgent_needing_reply']}: "
                                 + "; ".join(u["excerpt"][:50] for u in summary["urgent"][:3])),
        ("Rating vs sentiment", f"{summary['average_rating']} stars on average, sentiment "
                                f"{summary['average_sentiment']:+.2f}"),
    ]


DEMO = JobDemo(
    inputs=lambda n: [text for text, _ in demo_reviews(n)],
    spec=lambda texts: {"property": PROPERTY, "reviews": [{"text": t, "rating": r} for t, (_, r)
                                                          in zip(texts, demo_reviews(len(texts)), strict=True)]},
    result_rows=result_rows, subject=("Property", f"{PROPERTY['name']} ({PROPERTY['city']})"), asked=asked_within,
    per_call=GROUP_SIZE,
)
