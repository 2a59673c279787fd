-- Run once by the postgres image when it initialises its data directory (docker-compose.yml):
-- Knowledge Refresh then searches document_chunks with pgvector's cosine distance instead of the
-- exact real[] fallback. The engine's own role never needs the right to create extensions.
CREATE EXTENSION IF NOT EXISTS vector;
