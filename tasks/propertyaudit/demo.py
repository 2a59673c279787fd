"""PropertyAudit's part of ``dataengine demo``: distinct search-style queries about Austin apartments
(the same on every demo), the spec they make, and how the run's summary reads."""

from __future__ import annotations

import itertools
import random
from typing import Any

from dataengine import JobDemo

PROPERTY = {"name": "The Monarch at Riverside", "city": "Austin", "aliases": ["Monarch at Riverside"],
            "website": "https://www.the-monarch-at-riverside.example"}
TEMPLATES = (
    "best apartments near {place} Austin with {amenity}",
    "apartments with {amenity} near {place} in Austin TX",
    "top rated apartment communities close to {place}, Austin, that have {amenity}",
    "where to rent near {place} in Austin if I want {amenity}",
    "affordable Austin apartments near {place} with {amenity}",
)
PLACES = ("downtown", "South Congress", "the Domain", "Zilker Park", "Mueller", "Hyde Park", "the UT campus",
          "Lady Bird Lake", "East Cesar Chavez", "Riverside Drive")
AMENITIES = ("a pool", "a gym", "a dog park", "in-unit laundry", "covered parking", "a rooftop deck",
             "EV charging", "a coworking space", "short-term leases", "utilities included")


def demo_queries(n: int) -> list[str]:
    """``n`` distinct search-style queries about Austin apartments, the same on every demo."""
    combos = list(itertools.product(TEMPLATES, PLACES, AMENITIES))
    random.Random(7).shuffle(combos)  # neighbouring queries differ in every part  # noqa: S311  jitter/ordering, not a secret
    return [t.format(place=p, amenity=a) for t, p, a in combos[:n]]


def result_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """The audit's summary as the demo's result table shows it."""
    return [
        ("Visibility score", f"{summary['visibility_score']:.0%} "
                             f"({summary['mentions']} of {summary['queries_answered']} answers mention it)"),
        ("Mean rank", "—" if summary["mean_rank"] is None else f"{summary['mean_rank']:g} when mentioned"),
        ("Top competitors", ", ".join(f"{c['name']} ({c['mentions']})" for c in summary["top_competitors"])),
    ]


DEMO = JobDemo(inputs=demo_queries, spec=lambda queries: {"property": PROPERTY, "queries": queries},
               result_rows=result_rows, subject=("Property", f"{PROPERTY['name']} ({PROPERTY['city']})"), default=True)
