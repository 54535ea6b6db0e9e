"""docker-compose.yml and the Dockerfile, checked by structure only.

No Docker engine (nor `docker compose`) runs on this machine, so nothing here
builds an image or starts a container. What is checked: the file loads as YAML,
has Redis, two workers and the demo producer, builds from a Dockerfile in the
repository, every command names a module that exists with options its program
accepts, and the environment matches what the code reads.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

SERVICE_KEYS = {"image", "build", "command", "entrypoint", "environment", "depends_on",
                "healthcheck", "ports", "volumes", "restart", "working_dir", "user", "init",
                "stop_grace_period", "stop_signal", "deploy", "profiles"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
ENV_READ = re.compile(r"""os\.environ(?:\.get\(|\[)\s*["']([A-Z_][A-Z0-9_]*)["']""")


def mini_yaml(text: str) -> dict[str, Any]:
    """The YAML subset the compose file keeps to: block mappings, flow lists written as
    JSON, plain scalars. Anything else raises, so the file cannot drift out of it."""
    root: dict[str, Any] = {}
    stack: list[tuple[int, dict[str, Any]]] = [(-1, root)]
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip(" "))
        if line[indent] in "-\t":
            raise ValueError(f"line {number}: block sequences and tabs are outside the subset")
        key, sep, rest = line.strip().partition(":")
        if not sep or not key:
            raise ValueError(f"line {number}: not a 'key: value' entry: {line!r}")
        while stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        if key in parent:
            raise ValueError(f"line {number}: duplicate key {key!r}")
        rest = rest.strip()
        if not rest:
            parent[key] = child = {}
            stack.append((indent, child))
        elif rest.startswith("["):
            parent[key] = json.loads(rest)
        elif rest[0] in "\"'{&*!|>%@`":
            raise ValueError(f"line {number}: quoted, flow-map or special scalars are outside "
                             f"the subset: {rest!r}")
        else:
            parent[key] = int(rest) if rest.isdigit() else rest
    return root


def load_compose() -> dict[str, Any]:
    """Through PyYAML when it is installed, else through the strict subset loader."""
    text = COMPOSE.read_text()
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        return mini_yaml(text)
    loaded: dict[str, Any] = yaml.safe_load(text)
    assert loaded == mini_yaml(text)
    return loaded


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def env_read_by(*files: str) -> set[str]:
    return {m for f in files for m in ENV_READ.findall((ROOT / f).read_text())}


def test_services_are_redis_two_workers_and_the_demo(compose: dict[str, Any]) -> None:
    assert set(compose) == {"services"}
    services = compose["services"]
    assert set(services) == {"redis", "worker1", "worker2", "demo"}
    for name, service in services.items():
        assert set(service) <= SERVICE_KEYS, (name, set(service) - SERVICE_KEYS)
        assert ("image" in service) != ("build" in service), name


def test_redis_service_is_healthchecked_and_never_evicts(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_built_services_use_the_dockerfile_in_the_repository(compose: dict[str, Any]) -> None:
    for name in ("worker1", "worker2", "demo"):
        context = ROOT / compose["services"][name]["build"]
        assert context.resolve() == ROOT and (context / "Dockerfile").is_file(), name


def test_depends_on_waits_for_a_healthy_redis(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("worker1", "worker2", "demo"):
        deps = services[name]["depends_on"]
        assert deps["redis"] == {"condition": "service_healthy"}
        assert all(d["condition"] in CONDITIONS and dep in services for dep, d in deps.items())
    assert set(services["demo"]["depends_on"]) == {"redis", "worker1", "worker2"}


def test_worker_commands_are_celery_workers_of_the_billing_app(
    compose: dict[str, Any]
) -> None:
    from celery import Celery
    from celery.bin.base import CLIContext
    from celery.bin.worker import worker

    cli = CLIContext(app=Celery("parse-only"), no_color=True, workdir=None)
    hostnames = set()
    for name in ("worker1", "worker2"):
        command = compose["services"][name]["command"]
        assert command[:4] == ["celery", "-A", "examples.billing.app", "worker"]
        assert importlib.util.find_spec("examples.billing.app") is not None
        ctx = worker.make_context("worker", list(command[4:]), obj=cli)  # rejects bad options
        assert ctx.params["pool"].__module__ == "celery.concurrency.prefork"
        assert ctx.params["concurrency"] == 2
        hostnames.add(ctx.params["hostname"])
    assert len(hostnames) == 2  # two distinct workers, not one twice


def test_demo_command_runs_the_demo_module_with_options_it_accepts(
    compose: dict[str, Any]
) -> None:
    from examples.demo import build_parser

    command = compose["services"]["demo"]["command"]
    assert command[:3] == ["python", "-m", "examples.demo"]
    assert importlib.util.find_spec("examples.demo") is not None
    args = build_parser().parse_args(command[3:])
    assert args.external_workers is True  # the workers are the compose services


def test_environment_matches_what_the_code_reads(compose: dict[str, Any]) -> None:
    services = compose["services"]
    app_reads = env_read_by("examples/billing/app.py")
    demo_reads = env_read_by("examples/billing/app.py", "examples/demo.py")
    assert {"BILLING_BROKER_URL", "BILLING_KV_URL", "BILLING_KV_PREFIX"} <= app_reads
    for name, reads in (("worker1", app_reads), ("worker2", app_reads), ("demo", demo_reads)):
        env = services[name]["environment"]
        assert set(env) <= reads, (name, set(env) - reads)  # no typo is silently ignored
        assert app_reads <= set(env), (name, app_reads - set(env))
        for value in env.values():
            if "://" in str(value):
                assert str(value).startswith("redis://redis:6379/"), value
    envs = [services[n]["environment"] for n in ("worker1", "worker2", "demo")]
    assert all(e == {k: v for k, v in envs[2].items() if k != "REDIS_URL"} for e in envs[:2])
    assert envs[2]["REDIS_URL"] == envs[2]["BILLING_KV_URL"]


def test_dockerfile_installs_the_package_and_runs_the_demo() -> None:
    lines = [ln.strip() for ln in DOCKERFILE.read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    instructions = [ln.split(None, 1) for ln in joined.splitlines()]
    ops = [op for op, *_ in instructions]
    assert ops[0] == "FROM" and instructions[0][1].startswith("python:3.")
    workdir = dict(i for i in instructions if i[0] == "WORKDIR")["WORKDIR"]
    assert workdir == "/app"
    for op, rest in instructions:
        if op == "COPY":
            *sources, _dest = shlex.split(rest)
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the build context"
    pyproject = (ROOT / "pyproject.toml").read_text()
    section = pyproject.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    extras = set(re.findall(r"^([a-z][a-z0-9_-]*)\s*=\s*\[", section, flags=re.M))
    install = next(rest for op, rest in instructions if op == "RUN" and "pip install" in rest)
    wanted = re.search(r'"\.\[([a-z,]+)\]"', install)
    assert wanted is not None and set(wanted.group(1).split(",")) <= set(extras)
    assert "embedded" in wanted.group(1)  # `docker run` alone starts the embedded Redis
    cmd = json.loads(dict(i for i in instructions if i[0] == "CMD")["CMD"])
    assert cmd == ["python", "-m", "examples.demo"]
    assert ops.index("USER") > ops.index("RUN")  # installs as root, runs as a plain user


def test_mini_yaml_rejects_what_it_does_not_understand() -> None:
    for bad in ("a:\n  - x\n", "a: 'q'\n", "a: &anchor\n", "a: 1\na: 2\n", "just text\n"):
        with pytest.raises(ValueError):
            mini_yaml(bad)
    assert mini_yaml("a:\n  b: [\"x\", \"\"]\n  c: 3\nd: redis://h:1/0\n") == {
        "a": {"b": ["x", ""], "c": 3}, "d": "redis://h:1/0"}
