"""Knowledge Refresh's own settings: its schedule, whether private addresses may be fetched, fetch
timeouts and size, redirects, chunk sizes, embedding batches.

Read from ``DATAENGINE_KNOWLEDGE_*`` on first use (``KnowledgeLimits.current()``).
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from dataengine import JobSettings, get_settings, parse_schedule


class KnowledgeLimits(JobSettings):
    """How a source is fetched, chunked and embedded."""

    model_config = SettingsConfigDict(env_prefix="DATAENGINE_KNOWLEDGE_", extra="ignore")

    #: When beat starts ``knowledge.refresh`` for every property with sources: a five-field cron
    #: expression (UTC) or a number of seconds; empty turns the schedule off.
    refresh_schedule: str = "0 3 * * *"
    #: Loopback, private, link-local and metadata addresses may be fetched (tests, the demo; never in
    #: production). Off, such URLs are refused after DNS resolution and on every redirect: sources are user input.
    allow_private_urls: bool = False
    connect_timeout_s: float = Field(5.0, gt=0)
    #: The longest wait for the next bytes of an answer.
    read_timeout_s: float = Field(15.0, gt=0)
    #: The whole fetch (connecting, headers, body, every redirect): a server that trickles bytes cannot hold a step.
    fetch_timeout_s: float = Field(60.0, gt=0)
    #: The largest answer read (after decompression); a larger one fails the source as too large.
    max_bytes: int = Field(5_000_000, ge=1)
    max_redirects: int = Field(5, ge=0)
    #: Tokens per chunk (the embedding model's tokenizer) and how many consecutive chunks share.
    chunk_tokens: int = Field(400, ge=16)
    chunk_overlap_tokens: int = Field(50, ge=0)
    #: Chunks per embeddings request.
    embed_batch: int = Field(64, ge=1, le=2048)
    #: Sources one refresh request may register.
    max_sources: int = Field(1000, ge=1)
    #: Characters of a text source.
    max_text_chars: int = Field(1_000_000, ge=1)

    @field_validator("refresh_schedule")
    @classmethod
    def _valid_schedule(cls, value: str) -> str:
        if value.strip():
            parse_schedule(value)
        return value.strip()

    @model_validator(mode="after")
    def _check(self) -> KnowledgeLimits:
        if self.chunk_overlap_tokens >= self.chunk_tokens:
            raise ValueError("DATAENGINE_KNOWLEDGE_CHUNK_OVERLAP_TOKENS must be smaller than _CHUNK_TOKENS")
        if self.allow_private_urls and get_settings().environment == "production":
            raise ValueError("DATAENGINE_KNOWLEDGE_ALLOW_PRIVATE_URLS is for tests and the demo, never production")
        return self

