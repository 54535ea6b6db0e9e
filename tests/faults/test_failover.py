"""Sentinel failover: the coordination master is killed (``kill -9``) and a sentinel
promotes its replica; workers and producer follow through a ``redis+sentinel://`` URL."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from redis.sentinel import Sentinel

from celery_kv.testing import RedisServer, free_port, start_server
from celery_kv.testing.servers import _binary
from tests.conftest import wait_for
from tests.faults.harness import Scenario, plan

pytestmark = [pytest.mark.slow, pytest.mark.worker, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "coordination"


@dataclass
class Replicated:
    master: RedisServer
    replica: RedisServer
    sentinels: list[int]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def client(self) -> redis.Redis:
        found: redis.Redis = Sentinel([("127.0.0.1", p) for p in self.sentinels]).master_for(
            SERVICE, decode_responses=True, socket_timeout=2.0)
        return found

    def master_port(self) -> int:
        with redis.Redis(port=self.sentinels[0], decode_responses=True) as s:
            _host, port = s.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(port)


@pytest.fixture
def replicated() -> Iterator[Replicated]:
    """A master, its replica and three sentinels (quorum 2), each a process of its own."""
    master = start_server()
    replica = start_server(extra=["--replicaof", "127.0.0.1", str(master.port)])
    workdir = tempfile.mkdtemp(prefix="celery-kv-sentinel-")
    sentinels: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    try:
        with redis.Redis(port=replica.port, decode_responses=True) as r:
            wait_for(lambda: r.info("replication")["master_link_status"] == "up", 20,
                     "the replica to sync")
        for i in range(3):
            conf = Path(workdir, f"sentinel-{i}.conf")
            conf.write_text(
                f"sentinel monitor {SERVICE} 127.0.0.1 {master.port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 5000\n")
            port = free_port()
            sentinels.append(subprocess.Popen(
                [_binary("redis-server"), str(conf), "--sentinel", "--port", str(port),
                 "--bind", "127.0.0.1", "--dir", workdir],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
            ports.append(port)
        found = Replicated(master, replica, ports)

        def ready() -> bool:
            with contextlib.suppress(redis.RedisError), redis.Redis(port=ports[0]) as s:
                info = s.info("sentinel")
                return bool(info.get("master0", {}).get("sentinels", 0) >= 3
                            and info["master0"].get("slaves", 0) >= 1)
            return False

        wait_for(ready, 30, "the sentinels to see each other and the replica")
        yield found
    finally:
        for proc in sentinels:
            proc.kill()
            proc.wait()
        for server in (master, replica):
            server.stop(signal.SIGKILL)
            shutil.rmtree(server.workdir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


def test_sentinel_failover_after_a_master_kill_9(scenario: Callable[..., Scenario],
                                                 replicated: Replicated) -> None:
    """0 lost; a call whose outcome was acknowledged (and replicated) before the failover
    never runs again; later ones may (the README's caveat on asynchronous replication,
    which must stay)."""
    s = scenario("sentinel failover", replicated.url, replicated.client())
    with s.producing(plan(s.tag)):
        s.wait_moment()
        acknowledged = s.succeeded_units()
        with redis.Redis(port=replicated.master.port, decode_responses=True) as m:
            offset = int(m.info("replication")["master_repl_offset"])
        with redis.Redis(port=replicated.replica.port, decode_responses=True) as r:
            wait_for(lambda: int(r.info("replication")["slave_repl_offset"]) >= offset, 10,
                     "the replica to hold every acknowledged write")
        s.fault_at()
        os.kill(replicated.master.process.pid, signal.SIGKILL)
        replicated.master.process.wait()
        wait_for(lambda: replicated.master_port() == replicated.replica.port, 30,
                 "the sentinels to promote the replica")
    s.settle()
    s.send_again()
    f = s.measure(exact=False)
    f.notes.append(f"{len(acknowledged)} idempotent calls acknowledged before the failover")
    twice = [u.split(" x")[0] for u in f.twice]
    assert acknowledged, "the failover came after some calls had completed"
    assert not [u for u in twice if u in acknowledged], f.detail()
    assert f.lost == 0, f.detail()
    assert f.failed == f.wrong == f.refused == 0, f.detail()
    assert f.no_ttl == 0, f.detail()
    assert "asynchronous replication" in (ROOT / "README.md").read_text(), \
        "the README's caveat on asynchronous replication stays"
