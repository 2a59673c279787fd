"""What tests, benchmarks and the demo use: the OpenAI-compatible stand-in LLM server (dataengine fake-llm) with its provider limits, and real Celery worker and beat processes started and stopped."""
