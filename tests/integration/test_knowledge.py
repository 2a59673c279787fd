"""Knowledge Refresh on the engine, in this process, against the stand-in LLM and a local HTTP server:
fetch, chunk, embed; unchanged sources cost no embedding; changed ones update and delete their chunks;
failures are recorded and the run completes; one refresh per property at a time; bad input; the SSRF
guard; a source's chunks commit with its result; search.

This machine's PostgreSQL has no pgvector, so these tests cover the ``real[]`` fallback of
``tasks/knowledge/vectors.py``; the pgvector test runs only where the extension is installed.
"""

from __future__ import annotations

import ipaddress
import json
import math
import time
import tracemalloc
import uuid
from datetime import timedelta
from typing import Any

import pytest
from conftest import reload_settings
from helpers import claim, expire_lease, results, run_row
from knowledgeserver import KnowledgeSite, gzip_bomb, page
from sqlalchemy import select, text

from dataengine.engine.runloop import execute_run
from dataengine.engine.runs import _checkpoint_sql, checkpoint
from dataengine.infra.db import session_scope, statement_scope
from dataengine.infra.errors import LeaseLost, SpecInvalid
from models.knowledge import DocumentChunk, KnowledgeSource
from tasks.knowledge import JOB, fetch, vectors, wire
from tasks.knowledge.config import KnowledgeLimits
from tasks.knowledge.search import search_knowledge
from tasks.knowledge.spec import start_runs
from tasks.knowledge.step import record_source_chunks, refresh_source

PROPERTY = "monarch-riverside"
TEXT_SOURCE = {"title": "House rules", "text": "Quiet hours start at 10 pm. Grills are allowed on the ground floor patios."}


@pytest.fixture
def site():
    with KnowledgeSite() as s:
        yield s


@pytest.fixture
def knowledge(db_url, fake_llm, monkeypatch):
    """Small chunks, a short read timeout and size cap, and private addresses allowed (the site is on loopback)."""
    for name, value in {"ALLOW_PRIVATE_URLS": "true", "READ_TIMEOUT_S": "0.5", "MAX_BYTES": "100000",
                        "CHUNK_TOKENS": "60", "CHUNK_OVERLAP_TOKENS": "10", "EMBED_BATCH": "4"}.items():
        monkeypatch.setenv(f"DATAENGINE_KNOWLEDGE_{name}", value)
    reload_settings()
    yield fake_llm
    reload_settings()


def refresh(**kwargs: Any) -> list[uuid.UUID]:
    """``knowledge.refresh`` without a run id, then each run it created executed here; the run ids."""
    started = start_runs(**kwargs)
    for run_id, created in started:
        if created:
            execute_run(job=JOB, run_id=str(run_id), worker_id="w/1", task_id="task-1")
    return [run_id for run_id, _ in started]


def chunks(property_id: str = PROPERTY) -> list[dict[str, Any]]:
    with session_scope() as session:
        rows = session.execute(select(DocumentChunk.__table__).where(DocumentChunk.property_id == property_id)
                               .order_by(DocumentChunk.source_id, DocumentChunk.position)).mappings().all()
    return [dict(r) for r in rows]


def sources(property_id: str = PROPERTY) -> dict[str, dict[str, Any]]:
    with session_scope() as session:
        rows = session.execute(select(KnowledgeSource.__table__).where(KnowledgeSource.property_id == property_id)
                               ).mappings().all()
    return {r["url"] or r["title"]: dict(r) for r in rows}


def embedded(fake: Any) -> int:
    """Texts the stand-in was asked to embed (or asked anything about) so far."""
    return sum(fake.stats()["prompts"].values())


def test_a_first_refresh_embeds_and_a_second_of_unchanged_sources_makes_no_embedding_call(knowledge, site):
    urls = [site.url(p) for p in ("/changing", "/unchanged", "/conditional", "/notes.txt")]
    [run_id] = refresh(property_id=PROPERTY, sources=[{"url": u} for u in urls] + [TEXT_SOURCE])
    row = run_row(run_id, job=JOB)
    assert row["status"] == "completed" and row["completed_steps"] == 5, row["error_message"]
    summary = row["summary"]
    assert (summary["sources_fetched"], summary["sources_unchanged"], summary["sources_failed"]) == (5, 0, 0)
    stored = chunks()
    assert summary["chunks_added"] == len(stored) > 5 and summary["tokens_embedded"] > 0
    assert summary["chunks_updated"] == summary["chunks_deleted"] == 0
    assert row["prompt_tokens"] == summary["tokens_embedded"]
    assert all(len(c["embedding"]) == 1536 and 0 < c["token_count"] <= 60 for c in stored)
    everything = "\n".join(c["content"] for c in stored)
    assert "rooftop pool" in everything and "Quiet hours start" in everything and "locker room" in everything
    assert "tracking" not in everything and "Copyright footer" not in everything and "Floor plans" not in everything
    asked = knowledge.stats()["answered_prompts"]
    assert all(asked[c["content"]] == 1 for c in stored)  # each distinct chunk embedded once
    known = sources()
    assert known[site.url("/changing")]["title"] == "Amenities" and known[site.url("/conditional")]["etag"]
    assert all(s["content_hash"] and s["last_error"] is None and s["last_fetched_at"] for s in known.values())

    before = embedded(knowledge)
    [second] = refresh(property_id=PROPERTY)
    assert second != run_id
    summary = run_row(second, job=JOB)["summary"]
    assert (summary["sources_fetched"], summary["sources_unchanged"], summary["sources_failed"]) == (0, 5, 0)
    assert summary["tokens_embedded"] == summary["chunks_added"] == 0
    assert embedded(knowledge) == before  # zero embedding calls
    assert site.not_modified["/conditional"] == 1  # the conditional GET got its 304
    assert chunks() == stored


def test_a_changed_source_updates_its_chunks_and_deletes_those_of_content_that_went_away(knowledge, site):
    refresh(property_id=PROPERTY, sources=[{"url": site.url("/changing")}, {"url": site.url("/unchanged")}])
    assert len(chunks()) >= 4
    site.pages["/changing"] = page("Amenities", ["The pool is closed for repairs until June. Pets are welcome."])
    before = embedded(knowledge)
    [run_id] = refresh(property_id=PROPERTY)
    summary = run_row(run_id, job=JOB)["summary"]
    assert (summary["sources_fetched"], summary["sources_unchanged"]) == (1, 1)
    assert summary["chunks_updated"] >= 1 and summary["chunks_deleted"] >= 2 and summary["chunks_added"] == 0
    source_id = sources()[site.url("/changing")]["id"]
    now = [c for c in chunks() if c["source_id"] == source_id]
    assert [c["position"] for c in now] == list(range(len(now)))
    text_now = "\n".join(c["content"] for c in now)
    assert "closed for repairs" in text_now and "rooftop" not in text_now
    # Only the changed chunks were embedded, once each.
    assert embedded(knowledge) - before == summary["chunks_updated"]
    assert all(knowledge.stats()["answered_prompts"][c["content"]] == 1 for c in now)


def test_failed_sources_are_recorded_with_their_error_and_the_run_completes(knowledge, site):
    paths = ["/missing", "/slow", "/huge", "/image.png", "/unchanged"]
    [run_id] = refresh(property_id=PROPERTY, sources=[{"url": site.url(p)} for p in paths])
    row = run_row(run_id, job=JOB)
    assert row["status"] == "completed" and row["completed_steps"] == 5
    recorded = results(run_id, job=JOB)
    errors = {i: recorded[i]["error"] or "" for i in range(5)}
    assert errors[0].startswith("HTTPError:") and "HTTP 404" in errors[0]
    assert errors[1].startswith("FetchTimedOut:")
    assert errors[2].startswith("TooLarge:") and "100000" in errors[2]
    assert errors[3].startswith("NotText:") and "image/png" in errors[3]
    assert recorded[4]["outcome"] == "fetched" and recorded[4]["error"] is None
    summary = row["summary"]
    assert (summary["sources_fetched"], summary["sources_failed"]) == (1, 4)
    assert [f["url"] for f in summary["failed"]] == [site.url(p) for p in paths[:4]]
    known = sources()
    assert "HTTP 404" in known[site.url("/missing")]["last_error"] and known[site.url("/missing")]["content_hash"] is None
    assert known[site.url("/unchanged")]["last_error"] is None
    assert {c["source_id"] for c in chunks()} == {known[site.url("/unchanged")]["id"]}


def delete_source(source_id: uuid.UUID) -> None:
    with session_scope() as session:
        session.execute(text("DELETE FROM knowledge_sources WHERE id = :id"), {"id": source_id})


def test_a_source_deleted_after_its_refresh_started_is_recorded_as_failed_and_the_run_completes(knowledge, site):
    [(run_id, _)] = start_runs(property_id=PROPERTY, sources=[{"url": site.url("/unchanged")}, TEXT_SOURCE])
    delete_source(sources()[TEXT_SOURCE["title"]]["id"])  # by hand, with SQL: before its step read it
    execute_run(job=JOB, run_id=str(run_id), worker_id="w/1", task_id="t")
    row = run_row(run_id, job=JOB)
    assert row["status"] == "completed" and row["summary"]["sources_failed"] == 1
    gone = results(run_id, job=JOB)[1]
    assert gone["outcome"] == "failed" and "no longer exists" in gone["error"]
    assert results(run_id, job=JOB)[0]["outcome"] == "fetched"


def test_a_source_deleted_between_its_step_and_the_checkpoint_takes_no_chunks(knowledge, site):
    [(run_id, _)] = start_runs(property_id=PROPERTY, sources=[TEXT_SOURCE])
    c = claim(run_id, job=JOB)
    with session_scope() as session:
        [(index, item)] = JOB.load_steps(session, run_id, 0, 10)
    outcome = refresh_source(JOB.prepare(type("Row", (), {"property_id": PROPERTY, "model": None, "workspace_id": None})), index, item)
    assert outcome.rows.chunks
    delete_source(item.source_id)
    with session_scope() as session:  # the checkpoint commits; the chunks would reference nothing
        checkpoint(session=session, job=JOB, claim=c, results=[{"query_index": 0, **outcome.values}], next_index=1,
                   in_flight=[], eta_s=None)
        record_source_chunks(session, run_id, [(0, outcome)])
    assert results(run_id, job=JOB)[0]["outcome"] == "fetched" and chunks() == []


def test_a_property_with_a_queued_or_running_refresh_gets_its_id_not_a_second_run(knowledge, site):
    [(first, created)] = start_runs(property_id=PROPERTY, sources=[{"url": site.url("/unchanged")}])
    assert created
    assert start_runs(property_id=PROPERTY) == [(first, False)]
    start_runs(property_id="other-property", sources=[TEXT_SOURCE])
    everything = dict(start_runs())
    assert everything[first] is False and len(everything) == 2
    assert run_row(first, job=JOB)["total_steps"] == 1
    execute_run(job=JOB, run_id=str(first), worker_id="w/1", task_id="t")
    [(again, created)] = start_runs(property_id=PROPERTY, sources=[{"url": site.url("/unchanged")}])  # known URL
    assert created and again != first and run_row(again, job=JOB)["total_steps"] == 1


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"sources": [{"url": "https://example.com"}]}, "sources are registered for a property: send property_id too"),
    ({"property_id": ""}, "property_id: String should have at least 1 character"),
    ({"property_id": "x" * 201}, "property_id: String should have at most 200 characters"),
    ({"property_id": "p", "sources": [{"url": "ftp://example.com/a"}]}, "only http and https URLs"),
    ({"property_id": "p", "sources": [{"text": "no title"}]}, "a text source needs a title"),
    ({"property_id": "p", "sources": [{"url": "https://a.example", "text": "both"}]}, "either"),
    ({"property_id": "p", "sources": [{"text": "a\x00b", "title": "t"}]}, "NUL"),
    ({"property_id": "p", "colour": "red"}, "colour: Extra inputs are not permitted"),
    ({"property_id": "no-sources-yet"}, "'no-sources-yet' has no knowledge sources"),
])
def test_bad_input_to_knowledge_refresh_gets_a_clear_error(knowledge, kwargs, message):
    with pytest.raises(SpecInvalid) as caught:
        start_runs(**kwargs)
    assert str(caught.value).startswith("The run spec is invalid: ") and message in str(caught.value)


def test_a_sources_chunks_commit_with_its_result_or_not_at_all(knowledge, site):
    [(run_id, _)] = start_runs(property_id=PROPERTY, sources=[TEXT_SOURCE])
    source_id = sources()[TEXT_SOURCE["title"]]["id"]
    c = claim(run_id, job=JOB)
    with session_scope() as session:
        [(index, item)] = JOB.load_steps(session, run_id, 0, 10)
    assert item.source_id == source_id and item.kind == "text"
    outcome = refresh_source(JOB.prepare(type("Row", (), {"property_id": PROPERTY, "model": None, "workspace_id": None})), index, item)
    assert outcome.values["chunks_added"] >= 1
    row = {"query_index": 0, **outcome.values, "prompt_tokens": outcome.usage.prompt_tokens}

    def write(claim_: Any, fail: bool = False) -> None:
        with session_scope() as session:
            checkpoint(session=session, job=JOB, claim=claim_, results=[row], next_index=1, in_flight=[], eta_s=None)
            record_source_chunks(session, run_id, [(0, outcome)])
            if fail:
                raise RuntimeError("the worker died before COMMIT")

    with pytest.raises(RuntimeError):
        write(c, fail=True)
    assert results(run_id, job=JOB) == {} and chunks() == [] and sources()[TEXT_SOURCE["title"]]["content_hash"] is None
    expire_lease(run_id, job=JOB)
    taken = claim(run_id, "w/2", job=JOB)
    with pytest.raises(LeaseLost):  # the first worker, taken over: its fenced write lands nowhere
        write(c)
    assert results(run_id, job=JOB) == {} and chunks() == []
    assert sources()[TEXT_SOURCE["title"]]["content_hash"] is None  # the checkpoint's own UPDATE neither
    write(taken)
    assert results(run_id, job=JOB)[0]["outcome"] == "fetched" and len(chunks()) == outcome.values["chunks_added"]
    assert sources()[TEXT_SOURCE["title"]]["content_hash"] is not None


def test_a_stale_claims_checkpoint_of_unchanged_sources_changes_no_source_row(knowledge, site):
    # An unchanged source's checkpoint is one statement committed on its own (no transaction to roll
    # back): the source's UPDATE inside it must be fenced like the result it reads from.
    refresh(property_id=PROPERTY, sources=[{"url": site.url("/conditional")}])
    before = sources()[site.url("/conditional")]
    [(run_id, _)] = start_runs(property_id=PROPERTY)
    stale = claim(run_id, job=JOB)
    with session_scope() as session:
        [(index, item)] = JOB.load_steps(session, run_id, 0, 10)
    outcome = refresh_source(JOB.prepare(type("Row", (), {"property_id": PROPERTY, "model": None, "workspace_id": None})), index, item)
    assert outcome.values["outcome"] == "unchanged" and outcome.rows is None
    expire_lease(run_id, job=JOB)
    claim(run_id, "w/2", job=JOB)
    row = {"query_index": 0, **outcome.values, "etag": '"forged"'}
    with pytest.raises(LeaseLost), statement_scope() as conn:
        checkpoint(session=conn, job=JOB, claim=stale, results=[row], next_index=1, in_flight=[], eta_s=None)
    after = sources()[site.url("/conditional")]
    assert (after["etag"], after["last_fetched_at"]) == (before["etag"], before["last_fetched_at"])
    assert results(run_id, job=JOB) == {}


def test_search_returns_the_closest_chunk_first_with_exact_cosine_scores(knowledge, site):
    refresh(property_id=PROPERTY, sources=[{"url": site.url("/changing")}, TEXT_SOURCE])
    stored = chunks()
    target = next(c for c in stored if [o["content"] for o in stored].count(c["content"]) == 1)  # the page repeats
    hits = search_knowledge(property_id=PROPERTY, question=target["content"], limit=3)
    assert hits[0].chunk_id == target["id"] and hits[0].score == pytest.approx(1.0, abs=1e-5)

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    expected = sorted((cosine(c["embedding"], target["embedding"]) for c in stored), reverse=True)[:3]
    assert [h.score for h in hits] == pytest.approx(expected, abs=1e-5) and expected[1] < 0.5
    assert search_knowledge(property_id="nobody", question="pool", limit=3) == []


def test_search_with_pgvector_where_the_extension_is_installed(knowledge, site):
    with session_scope() as session:
        available = session.scalar(text("SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'"))
    if not available:
        pytest.skip("this PostgreSQL has no pgvector; the tests cover the real[] fallback of tasks/knowledge/vectors.py")
    with session_scope() as session:
        session.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
    refresh(property_id=PROPERTY, sources=[TEXT_SOURCE])
    with session_scope() as session:
        assert vectors.has_pgvector(session)
    [target] = chunks()
    [hit] = search_knowledge(property_id=PROPERTY, question=target["content"], limit=1)
    assert hit.chunk_id == target["id"] and hit.score == pytest.approx(1.0, abs=1e-5)


def _limits(**changes: Any) -> KnowledgeLimits:
    return KnowledgeLimits(**{"read_timeout_s": 1.0, **changes})


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:{port}/unchanged", "http://localhost:{port}/unchanged", "http://[::1]:{port}/unchanged",
    "http://2130706433:{port}/unchanged", "http://10.1.2.3/", "http://192.168.0.1/", "http://169.254.169.254/latest/",
    "http://100.100.100.200/", "http://0.0.0.0:{port}/", "http://[::ffff:127.0.0.1]:{port}/",
])
def test_private_loopback_and_metadata_addresses_are_refused_unless_allowed(site, url):
    url = url.format(port=site.server.server_address[1])
    with pytest.raises(fetch.URLRefused, match="not a public address"):
        fetch.fetch(url, etag=None, last_modified=None, limits=_limits(), allow_private=False)
    assert sum(site.hits.values()) == 0


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a", "gopher://127.0.0.1:70/"])
def test_only_http_and_https_are_fetched(url):
    with pytest.raises(fetch.URLRefused, match="only http and https"):
        fetch.fetch(url, etag=None, last_modified=None, limits=_limits(), allow_private=True)


def test_a_redirect_to_a_private_address_is_refused(site, monkeypatch):
    # The site stands in for a public one: its loopback address counts as public, nothing else does.
    public = fetch.is_public
    monkeypatch.setattr(fetch, "is_public", lambda ip: str(ip) == "127.0.0.1" or public(ip))
    with pytest.raises(fetch.URLRefused, match="169.254.169.254, which is not a public address"):
        fetch.fetch(site.url("/redirect-private"), etag=None, last_modified=None, limits=_limits(), allow_private=False)
    assert site.hits["/redirect-private"] == 1
    ok = fetch.fetch(site.url("/redirect-local"), etag=None, last_modified=None, limits=_limits(), allow_private=False)
    assert ok.url == site.url("/unchanged") and "Parking is free" in (ok.text or "")
    with pytest.raises(fetch.TooManyRedirects):
        fetch.fetch(site.url("/redirect-local"), etag=None, last_modified=None, limits=_limits(max_redirects=0),
                    allow_private=False)


@pytest.mark.parametrize("address", [
    "::127.0.0.1", "::10.0.0.1",  # IPv4-compatible
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b:1::a00:1",  # NAT64, the well-known and the local prefix
    "2002:7f00:1::", "2002:a9fe:a9fe::",  # 6to4
    "2001:0:4136:e378:8000:63bf:f5f7:f7f7",  # Teredo, client 10.8.8.8
    "fec0::1",  # site-local
])
def test_ipv6_forms_of_private_addresses_are_refused(address):
    with pytest.raises(fetch.URLRefused, match="not a public address"):
        fetch.fetch(f"http://[{address}]/", etag=None, last_modified=None, limits=_limits(), allow_private=False)


@pytest.mark.parametrize("address", ["2606:4700:4700::1111", "64:ff9b::808:808", "::ffff:8.8.8.8", "8.8.8.8"])
def test_public_addresses_stay_public_in_their_ipv6_forms(address):
    assert fetch.is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("path", ["/trickle-head", "/trickle-body", "/silent"])
def test_a_server_that_trickles_its_answer_or_says_nothing_is_cut_off_at_the_whole_fetch_limit(site, path):
    # Each byte comes sooner than the read timeout: only the whole fetch's limit can end it.
    limits = _limits(read_timeout_s=3.0, fetch_timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(fetch.FetchTimedOut, match="not fetched within 1 s"):
        fetch.fetch(site.url(path), etag=None, last_modified=None, limits=limits, allow_private=True)
    assert time.monotonic() - started < limits.fetch_timeout_s + 0.5


def test_compressed_pages_are_read_and_an_encoding_not_asked_for_is_refused(site):
    # Large and repetitive: each read off the wire inflates to many pieces.
    site.pages["/unchanged"] = page("Parking", [f"Parking space {i} is free for residents." for i in range(6_000)])
    plain = fetch.fetch(site.url("/unchanged"), etag=None, last_modified=None, limits=_limits(), allow_private=True)
    assert len(plain.text or "") > 3 * wire.PIECE_BYTES
    for path in ("/gzip", "/deflate", "/raw-deflate"):
        got = fetch.fetch(site.url(path), etag=None, last_modified=None, limits=_limits(), allow_private=True)
        assert got.text == plain.text, path
        assert site.accept_encoding[path] == "gzip, deflate"
    with pytest.raises(fetch.NotDecodable, match="content encoding br is not one the refresh reads"):
        fetch.fetch(site.url("/brotli"), etag=None, last_modified=None, limits=_limits(), allow_private=True)
    with pytest.raises(fetch.NotDecodable, match="the gzip body is corrupt"):
        fetch.fetch(site.url("/corrupt-gzip"), etag=None, last_modified=None, limits=_limits(), allow_private=True)


def test_a_gzip_bomb_fails_as_too_large_holding_no_more_than_the_cap_and_a_piece(site):
    limits = _limits(max_bytes=2_000_000)
    assert len(gzip_bomb(1024)) < limits.max_bytes  # built before measuring; small enough to pass Content-Length
    tracemalloc.start()
    try:
        with pytest.raises(fetch.TooLarge, match="more than 2000000 bytes"):
            fetch.fetch(site.url("/gzip-bomb"), etag=None, last_modified=None, limits=limits, allow_private=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # The cap, the body's growth margin (an eighth), a piece or two and the client itself: 2.7 MB (147 MB when
    # httpx inflated each 64 KiB read whole).
    assert peak < limits.max_bytes + 1_000_000, f"peak {peak:,} bytes for a cap of {limits.max_bytes:,}"


def test_a_refused_source_is_recorded_as_failed_when_private_addresses_are_not_allowed(knowledge, site, monkeypatch):
    monkeypatch.setenv("DATAENGINE_KNOWLEDGE_ALLOW_PRIVATE_URLS", "false")
    reload_settings()
    [run_id] = refresh(property_id=PROPERTY, sources=[{"url": site.url("/unchanged")}, TEXT_SOURCE])
    row = run_row(run_id, job=JOB)
    assert row["status"] == "completed" and row["summary"]["sources_failed"] == 1
    assert results(run_id, job=JOB)[0]["error"].startswith("URLRefused: refused http://127.0.0.1:")
    assert sum(site.hits.values()) == 0


@pytest.mark.timeout(120)
def test_knowledge_refresh_sent_to_a_worker_with_a_property_id_completes(workers, fake_llm, site):
    from conftest import wait_for
    from helpers import run_row as row_of

    from dataengine import app

    workers("kw", env={"DATAENGINE_KNOWLEDGE_ALLOW_PRIVATE_URLS": "true"})
    sent = app.send_task("knowledge.refresh", kwargs={
        "property_id": PROPERTY, "sources": [{"url": site.url("/changing")}, {"url": site.url("/missing")}, TEXT_SOURCE],
    }).get(timeout=30)
    assert sent["created"] == 1 and len(sent["run_ids"]) == 1
    row = wait_for(lambda: (r := row_of(sent["run_ids"][0], job=JOB))["status"] in ("completed", "failed") and r,
                   timeout_s=60, what="the refresh to finish")
    assert row["status"] == "completed", row["error_message"]
    assert (row["summary"]["sources_fetched"], row["summary"]["sources_failed"]) == (2, 1)
    with pytest.raises(Exception, match="sources are registered for a property"):
        app.send_task("knowledge.refresh", kwargs={"sources": [{"url": site.url("/changing")}]}).get(timeout=30)


def test_the_command_line_adds_lists_refreshes_and_searches(knowledge, site, engine_env):
    from typer.testing import CliRunner

    from dataengine.cli.main import command_line

    runner = CliRunner()

    def invoke(*args: str) -> Any:
        return runner.invoke(command_line(), ["knowledge", *args], catch_exceptions=False)

    assert invoke("sources", "add", "--property", PROPERTY, "--url", site.url("/changing")).exit_code == 0
    added = invoke("sources", "add", "--property", PROPERTY, "--text", TEXT_SOURCE["text"], "--title", "House rules")
    assert added.exit_code == 0 and "registered for monarch-riverside: House rules" in added.output
    bad = invoke("sources", "add", "--property", PROPERTY, "--text", "no title")
    assert bad.exit_code == 2 and "a text source needs a title" in bad.output
    started = invoke("refresh", "--property", PROPERTY)
    assert started.exit_code == 0 and started.output.strip().endswith("started")
    run_id = started.output.split()[0]
    assert invoke("refresh").output.split() == [run_id, "already", "queued", "or", "running"]
    execute_run(job=JOB, run_id=run_id, worker_id="w/1", task_id="t")
    listed = invoke("sources", "list", "--property", PROPERTY)
    assert site.url("/changing") in listed.output and "text: House rules" in listed.output
    found = invoke("search", "Quiet hours start at 10 pm. Grills are allowed on the ground floor patios.",
                   "--property", PROPERTY, "--limit", "2")
    lines = found.output.splitlines()
    assert found.exit_code == 0 and lines[0].startswith("1. 1.000  House rules #0") and "Quiet hours" in lines[1]
    unknown = invoke("refresh", "--property", "nobody")
    assert unknown.exit_code == 2 and "'nobody' has no knowledge sources" in unknown.output


def test_a_resumed_refresh_embeds_only_the_sources_without_a_result(knowledge):
    from helpers import answered, create
    from knowledgeserver import knowledge_prompts, knowledge_spec

    spec = knowledge_spec(6)
    run_id = create(spec, job=JOB)
    c = claim(run_id, job=JOB)
    recorded = [{"query_index": i, "source_id": spec["source_ids"][i], "outcome": "unchanged"} for i in (0, 1, 3)]
    with session_scope() as session:
        checkpoint(session=session, job=JOB, claim=c, results=recorded, next_index=2, in_flight=[2], eta_s=None)
    expire_lease(run_id, job=JOB)
    assert execute_run(job=JOB, run_id=str(run_id), worker_id="w/2", task_id="t").status == "completed"
    assert [answered(knowledge, t) for t in knowledge_prompts(spec)] == [0, 0, 1, 0, 1, 1]
    assert run_row(run_id, job=JOB)["summary"]["sources_fetched"] == 3


def test_a_checkpoint_finds_its_sources_by_key_however_many_the_table_holds(knowledge):
    # The checkpoint copies each result's validators to its source row. Joined to the results alone,
    # the planner read the whole sources table on every checkpoint: O(sources) per step.
    with session_scope() as session:
        session.execute(text("""
            INSERT INTO knowledge_sources (id, property_id, kind, url)
            SELECT gen_random_uuid(), 'p' || (n % 500), 'url', 'https://example.com/' || n
            FROM generate_series(1, 20000) AS n"""))
        session.execute(text("ANALYZE knowledge_sources"))
        source_id = session.scalar(text("SELECT id FROM knowledge_sources LIMIT 1"))
    row = {"query_index": 0, "source_id": str(source_id), "outcome": "unchanged", "run_id": str(uuid.uuid4()),
           "fencing_token": 1}
    with session_scope() as session:
        plan = "\n".join(session.scalars(
            text("EXPLAIN " + _checkpoint_sql(JOB).text),
            {"id": row["run_id"], "token": 1, "rows": f"[{json.dumps(row)}]", "next_index": 1, "in_flight": "{}",
             "eta_s": None, "lease_s": timedelta(seconds=3)},
        ))
    assert "Seq Scan on knowledge_sources" not in plan, plan
    assert "pk_knowledge_sources" in plan, plan
