"""pytest-celery 1.x: ``celery_setup`` with a Redis coordination container, wired in.

Needs ``pip install celery-kv[containers]`` and a Docker engine. Load it from your
``conftest.py``::

    pytest_plugins = ["celery_kv.testing.containers"]

and every ``celery_setup`` test gets:

- ``kv_redis_container``: a Redis container on pytest-celery's network, for coordination
  only (the broker and result backend stay pytest-celery's);
- a worker image with celery-kv installed (pytest-celery's worker image, plus
  ``pip install <kv_worker_package>``: ``celery-kv`` from PyPI unless you override that
  fixture, with a pinned version say);
- the worker's environment carries ``CELERY_KV_TEST_CONF`` (its ``install()`` applies
  ``kv_redis_url`` on the container network and this test's ``kv_prefix``) and, with
  ``kv_events``, ``CELERY_KV_EVENTS_JOURNAL``;
- ``celery_setup.app`` (pytest-celery's ``default_worker_app``) coordinates through the
  same container, from the host's published port, under the same prefix.

So ``kv_events`` sees the worker's decisions like a subprocess worker's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from pytest_celery import DEFAULT_WORKER_CONTAINER_TIMEOUT, DEFAULT_WORKER_VOLUME
from pytest_celery.vendors.redis.container import RedisContainer
from pytest_celery.vendors.worker.container import CeleryWorkerContainer
from pytest_docker_tools import build, container, fxtr

from ..celery.install import TEST_CONF_ENV
from .events import JOURNAL_ENV, KVEvents, journal_key

DOCKERFILE_DIR = os.path.join(os.path.dirname(__file__), "docker")


def docker_engine_missing() -> str | None:
    """Why no Docker engine can be used here, or None when one answers."""
    try:
        import docker
    except ImportError:
        return "the docker package is not installed (pip install celery-kv[containers])"
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:
        return f"no Docker engine answers ({type(exc).__name__}: {exc})"
    return None


kv_redis_container = container(
    image="{default_redis_backend_image}",
    ports={"6379/tcp": None},
    network="{default_pytest_celery_network.name}",
    wrapper_class=RedisContainer,
    timeout=60,
    command=RedisContainer.command(),
)


@pytest.fixture
def kv_worker_package() -> str:
    """What the worker image installs: a pip requirement (override to pin a version)."""
    return "celery-kv"


kv_worker_image = build(
    path=DOCKERFILE_DIR,
    tag="celery-kv/pytest-celery-worker:latest",
    buildargs={"BASE_IMAGE": "{celery_base_worker_image.id}",
               "CELERY_KV_PKG": fxtr("kv_worker_package")},
)

#: pytest-celery's worker container, from the image with celery-kv in it.
default_worker_container = container(
    image="{kv_worker_image.id}",
    ports=fxtr("default_worker_ports"),
    environment=fxtr("default_worker_env"),
    network="{default_pytest_celery_network.name}",
    volumes={"{default_worker_volume.name}": DEFAULT_WORKER_VOLUME},
    wrapper_class=CeleryWorkerContainer,
    timeout=DEFAULT_WORKER_CONTAINER_TIMEOUT,
    command=fxtr("default_worker_command"),
)


@pytest.fixture
def default_worker_env(default_worker_env: dict[str, str], kv_redis_container: Any,
                       kv_prefix: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """pytest-celery's worker environment, plus the coordination settings."""
    env = {**default_worker_env,
           TEST_CONF_ENV: json.dumps({"kv_redis_url": kv_redis_container.url,
                                      "kv_prefix": kv_prefix})}
    if "kv_events" in request.fixturenames:
        env[JOURNAL_ENV] = journal_key(kv_prefix)
    return env


@pytest.fixture
def default_worker_app(default_worker_app: Any, kv_redis_container: Any, kv_prefix: str,
                       request: pytest.FixtureRequest) -> Iterator[Any]:
    """pytest-celery's app, coordinating through the container from the host."""
    from ..celery.install import install, installed
    from ..kv import KV

    kv = KV.from_url(kv_redis_container.host_url, kv_prefix)
    previous = installed(default_worker_app).use(kv)
    install(default_worker_app, kv=kv)
    if "kv_events" in request.fixturenames:
        events: KVEvents = request.getfixturevalue("kv_events")
        events.attach(kv.store.client, journal_key(kv_prefix))
    try:
        yield default_worker_app
    finally:
        installed(default_worker_app).use(previous)
        kv.store.client.close()


__all__ = [
    "default_worker_app",
    "default_worker_container",
    "default_worker_env",
    "docker_engine_missing",
    "kv_redis_container",
    "kv_worker_image",
    "kv_worker_package",
]
