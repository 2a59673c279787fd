"""Submits per second as a producer sees them: ``propertyaudit.submit`` against a bare ``send_task`` of a no-op.

"Sent" here means ``send_task`` has returned: the message is in Redis (kombu's Redis transport
pushes it before returning), and that is all a producer that cannot reach the database waits
for. The run row does not exist yet; a worker creates it when it takes the submit (that part is
timed by ``one_step_runs.py``, submit to ``completed``). So no worker runs here, and the
messages are flushed with the benchmarks' Redis DB at the end.

Ours: the Celery app of ``dataengine`` (its configuration: the Redis result backend, sent
events) sending ``propertyaudit.submit`` with a one-query spec. Peer: the bare app
(``bare_celery``, Celery's defaults) sending ``bare_peer.noop`` with no arguments. Both in this
process, on the same Redis, rounds alternating after a warm-up each.

Target: ours >= 0.66 x the bare sends (medians).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import _peers  # first: it puts bench/ on sys.path
import bare_celery
from _peers import _common

TARGET_RATIO = 0.66
WARM_UP = 100

_common.configure("peers_submit_rate")
# Imported after configure(): the package reads its settings once, at import.
from dataengine.worker.app import app  # noqa: E402


def sends_per_s(n: int, send: Callable[[], object]) -> float:
    """``n`` calls of ``send`` per second."""
    return _peers.per_s(n, lambda: [send() for _ in range(n)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sends", type=int, default=2000, help="sends of each kind per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = args.sends
    spec = _common.audit_spec(1)

    def submit() -> object:
        return app.send_task("propertyaudit.submit", kwargs=spec)

    def bare() -> object:
        return bare_celery.app.send_task("bare_peer.noop")

    ours: list[float] = []
    peer: list[float] = []
    with _common.bench_environment(with_llm=False):
        _common.header("submits per second (sent), ours vs a bare send_task", sends=n, rounds=args.rounds,
                       sent="send_task returned: the message is in Redis; no worker runs")
        sends_per_s(WARM_UP, submit)
        sends_per_s(WARM_UP, bare)
        for round_no in range(1, args.rounds + 1):
            ours.append(sends_per_s(n, submit))
            peer.append(sends_per_s(n, bare))
            print(f"   round {round_no}: ours {ours[-1]:.0f} submits/s, bare {peer[-1]:.0f} sends/s")

    print()
    ratio = _peers.compare(_peers.Series("ours (propertyaudit.submit)", ours),
                           _peers.Series("bare Celery (no-op send_task)", peer), unit="/s", digits=0)
    ok = _common.verdict("submits/s vs bare send_task/s", ratio >= TARGET_RATIO,
                         f"{ratio:.3f}x (target >= {TARGET_RATIO:g}x)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
