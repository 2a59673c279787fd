"""A refresh of 1,000 unchanged sources against the first refresh of the same 1,000.

One property gets ``--sources`` URL sources, served by a local HTTP server (a page of a few
paragraphs each, with an ETag that answers a conditional GET with 304). The first refresh
fetches, extracts, chunks, embeds (through the SDK, against the stand-in LLM in its own process)
and stores every source; the second finds every source unchanged. Both run in this process with
``execute_run`` (``step_concurrency`` 4). The stand-in answers embeddings after
``--embed-latency-ms`` (default 100 ms, in the range of a hosted embeddings API for a short
batch); the fetches are local, a few milliseconds each, for both refreshes alike.

Targets: the unchanged refresh is >= 20x faster, and makes zero embedding calls.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import sys
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import _common

SPEED_TARGET = 20.0
_common.configure("knowledge_refresh", step_concurrency=4, knowledge_allow_private_urls="true", knowledge_max_sources=100_000)
# Imported after configure(): the package reads its settings once, at import.
from dataengine.engine.jobs import get_job, load_jobs  # noqa: E402
from dataengine.engine.runloop import execute_run  # noqa: E402
from dataengine.infra.settings import get_settings  # noqa: E402

PARAGRAPHS = (
    "The leasing office is open from nine to six on weekdays and from ten to four on Saturdays.",
    "Residents may keep two pets per apartment; the dog park is behind building C.",
    "Packages are delivered to the locker room by the main entrance and kept for five days.",
)


class Pages(ThreadingHTTPServer):
    """``/page/<n>``: a small HTML page with an ETag; a conditional GET with it gets 304."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.daemon_threads = True



class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        n = self.path.rsplit("/", 1)[-1]
        body = (f"<html><head><title>Page {n}</title></head><body><main><h1>Page {n}</h1>"
                + "".join(f"<p>{p} (page {n})</p>" for p in PARAGRAPHS) + "</main></body></html>").encode()
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        if self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.send_header("ETag", etag)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", etag)
        self.end_headers()
        self.wfile.write(body)


def serve_pages(ready: Any) -> None:
    """The site's process: serve until terminated, after saying which port."""
    pages = Pages()
    ready.put(pages.server_address[1])
    pages.serve_forever()


def page_url(port: int, n: int) -> str:
    return f"http://127.0.0.1:{port}/page/{n}"


def embedding_calls(llm_url: str) -> int:
    """Embedding requests the stand-in has answered (its stats count every API request)."""
    with urllib.request.urlopen(f"{llm_url}/_fake/stats", timeout=10) as response:
        return int(json.load(response)["requests"])


def refresh(job: Any, property_id: str) -> tuple[float, dict[str, Any]]:
    """Seconds for one refresh of the property, worked to the end here, and its summary."""
    (run_id, _), = job.start_runs(property_id=property_id)
    started = time.perf_counter()
    outcome = execute_run(job=job, run_id=run_id, worker_id="bench/knowledge", task_id=None)
    elapsed = time.perf_counter() - started
    if outcome.status != "completed":
        raise RuntimeError(f"refresh {run_id} ended {outcome.status}: {outcome.detail}")
    from dataengine.infra.db import session_scope

    with session_scope() as session:
        summary = session.execute(job.runs.select().where(job.runs.c.id == run_id)).one().summary
    return elapsed, summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=1000)
    parser.add_argument("--embed-latency-ms", type=float, default=100.0)
    args = parser.parse_args()
    load_jobs()
    job = get_job("knowledge")
    # The site runs in a process of its own, as a real one would: its CPU is not the engine's.
    ready: multiprocessing.Queue[int] = multiprocessing.get_context("fork").Queue()
    site = multiprocessing.get_context("fork").Process(target=serve_pages, args=(ready,), daemon=True)
    site.start()
    port = ready.get(timeout=10)
    try:
        with _common.bench_environment(llm_latency_ms=args.embed_latency_ms) as llm:
            assert llm is not None
            _common.header("knowledge refresh", sources=args.sources, embed_latency_ms=args.embed_latency_ms,
                           step_concurrency=get_settings().step_concurrency, fetches="local HTTP server, ETag/304")
            from tasks.knowledge.spec import add_sources

            add_sources(property_id="bench", sources=[{"url": page_url(port, i)} for i in range(args.sources)])
            calls0 = embedding_calls(llm.url)
            first_s, first = refresh(job, "bench")
            calls1 = embedding_calls(llm.url)
            again_s, again = refresh(job, "bench")
            calls2 = embedding_calls(llm.url)
    finally:
        site.terminate()
        site.join(5)
    print()
    print(f"   first refresh:     {first_s:7.2f} s, {calls1 - calls0} embedding calls, summary {first}")
    print(f"   unchanged refresh: {again_s:7.2f} s, {calls2 - calls1} embedding calls, summary {again}")
    verdicts = [
        _common.verdict("unchanged refresh vs first refresh", first_s / again_s >= SPEED_TARGET,
                        f"{first_s:.2f} / {again_s:.2f} s = {first_s / again_s:.1f}x faster (target >= {SPEED_TARGET}x)"),
        _common.verdict("embedding calls in the unchanged refresh", calls2 - calls1 == 0,
                        f"{calls2 - calls1} (target 0)"),
    ]
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
