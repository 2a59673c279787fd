# One image for every role: worker, beat, flower, migrate (see docker-compose.yml).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini celeryconfig.py flowerconfig.py ./
COPY dataengine ./dataengine
COPY models ./models
COPY tasks ./tasks
COPY alembic ./alembic
RUN pip install -e . && useradd --create-home dataengine
USER dataengine
# The worker, as `celery -A dataengine worker` takes it but leaner (docs/operations.md).
CMD ["dataengine-worker", "--loglevel", "INFO"]
