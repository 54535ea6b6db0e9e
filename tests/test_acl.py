"""A Redis ACL user limited to ``~<prefix>:*`` runs every primitive (README: Operating it)."""

from __future__ import annotations

import uuid

import redis

from celery_kv import KV
from celery_kv.testing import RedisServer

ACL_RULES = "+@read +@write +@scripting +ping +time"


def test_every_primitive_runs_under_a_prefix_limited_acl_user(redis_srv: RedisServer) -> None:
    prefix = "acl" + uuid.uuid4().hex[:8]
    user, password = f"u{prefix}", "secret"
    admin = redis.Redis(port=redis_srv.port)
    admin.execute_command("ACL", "SETUSER", user, "on", f">{password}", f"~{prefix}:*",
                          *ACL_RULES.split())
    try:
        kv = KV.from_url(f"redis://{user}:{password}@127.0.0.1:{redis_srv.port}/0", prefix=prefix)
        with kv.lock("job", ttl=5, auto_renew=True) as lock:
            assert lock.fence and lock.extend(5)
        with kv.semaphore("api", limit=2, ttl=5):
            pass
        limiter = kv.rate_limit("5/s", algorithm="sliding_log")
        assert limiter.hit("t").allowed
        limiter.reset("t")
        cache = kv.cache("c", ttl=5)
        assert cache.get_or_set("k", lambda: [1]) == [1]
        cache.clear()
        idem = kv.idempotency("i", ttl=5, lease=1)
        assert idem.run("order", lambda: {"ok": 1}) == {"ok": 1}
        sessions = kv.sessions("s", ttl=5)
        sid = sessions.create({"u": 1})
        assert sessions.rotate(sid)
        # and the user really is confined: a key outside the prefix is refused
        limited = redis.Redis(port=redis_srv.port, username=user, password=password)
        try:
            limited.set("elsewhere", "x")
        except redis.exceptions.NoPermissionError:
            pass
        else:
            raise AssertionError("the ACL user could write outside its prefix")
    finally:
        admin.execute_command("ACL", "DELUSER", user)
