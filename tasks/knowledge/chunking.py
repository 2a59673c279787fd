"""Token-aware chunks with overlap, offline: semantic-text-splitter carries the OpenAI tokenizer tables
in its wheel (``tiktoken`` would download them at run time)."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from functools import lru_cache

from semantic_text_splitter import TextSplitter

#: The tokenizer of the embedding models (``text-embedding-3-*`` use cl100k_base).
TOKENIZER_MODEL = "text-embedding-3-small"
_lock = threading.Lock()


@dataclass(frozen=True)
class Chunk:
    """A piece of a source's text at its position."""

    position: int
    content: str
    token_count: int
    content_hash: str


def digest(text: str) -> str:
    """SHA-256 of ``text``, hex."""
    return hashlib.sha256(text.encode()).hexdigest()


@lru_cache(maxsize=4)
def _splitter(tokens: int, overlap: int) -> TextSplitter:
    return TextSplitter.from_tiktoken_model(TOKENIZER_MODEL, tokens, overlap=overlap)


def count_tokens(text: str) -> int:
    """Tokens of ``text`` as the splitter measures them (one-token pieces, whitespace kept)."""
    with _lock:
        counter = _counter()
    return len(counter.chunks(text))


@lru_cache(maxsize=1)
def _counter() -> TextSplitter:
    return TextSplitter.from_tiktoken_model(TOKENIZER_MODEL, 1, trim=False)


def split(text: str, *, tokens: int, overlap: int) -> list[Chunk]:
    """``text`` in chunks of at most ``tokens`` tokens, consecutive ones sharing up to ``overlap``."""
    with _lock:  # building a splitter loads the tables once; lru_cache alone may build it twice
        splitter = _splitter(tokens, overlap)
    return [
        Chunk(position=i, content=piece, token_count=count_tokens(piece), content_hash=digest(piece))
        for i, piece in enumerate(splitter.chunks(text))
    ]
