"""Build one Redis client from a URL, or take one that is handed in.

URL forms:

- ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS), ``unix:///path?db=0``;
- ``redis+cluster://host:port[,host:port...]`` (``rediss+cluster://`` for TLS): Redis Cluster,
  the hosts are startup nodes and the rest are discovered;
- ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]``
  (``rediss+sentinel://`` for TLS to the master): the master of ``service_name`` as the
  sentinels report it, followed across failovers.

Fork safety: redis-py's connection pools check the PID before every checkout and
drop inherited sockets, so a prefork child never shares a socket with its parent.
celery-kv holds no single-connection or pub/sub client.
"""

from __future__ import annotations

from typing import Any, TypeAlias
from urllib.parse import parse_qs, unquote, urlsplit

import redis
import redis.exceptions as rexc
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from redis.sentinel import Sentinel

from .retry import as_kv_error
from .urls import mask_url, redact

# redis-py types its two clients apart; celery-kv uses what both offer.
AnyRedis: TypeAlias = Any

_PLAIN = ("redis", "rediss", "unix")
_CLUSTER = ("redis+cluster", "rediss+cluster")
_SENTINEL = ("redis+sentinel", "rediss+sentinel")


def _no_client_retry() -> Retry:
    # celery-kv owns the retry policy (tenacity, per-script safety); a second,
    # blind layer inside redis-py would retry non-idempotent scripts.
    return Retry(NoBackoff(), 0)


def _hosts(netloc: str) -> list[tuple[str, int]]:
    hosts = netloc.rsplit("@", 1)[-1]
    out = []
    for item in hosts.split(","):
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
        out.append((host or item, int(port) if port else 0))
    return out


def _credentials(netloc: str) -> dict[str, Any]:
    if "@" not in netloc:
        return {}
    userinfo = netloc.rsplit("@", 1)[0]
    user, sep, password = userinfo.partition(":")
    if not sep:
        return {"password": unquote(user)}
    return {"username": unquote(user) or None, "password": unquote(password) or None}


def _check(url: Any) -> str:
    """The scheme of ``url``; a ValueError naming the masked URL when it cannot be used."""
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(
            f"Redis URL {mask_url(url)!r} is not a URL (expected redis://host:port/db)"
        )
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    if scheme not in _PLAIN + _CLUSTER + _SENTINEL:
        raise ValueError(
            f"Redis URL scheme {scheme!r} in {mask_url(url)!r} is not supported; use "
            "redis://, rediss://, unix://, redis+cluster:// or redis+sentinel://"
        )
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    if "@" in rest[end:]:
        raise ValueError(
            f"Redis URL {mask_url(url)!r} has an '@' after its host: percent-encode '/', '?', "
            "'#' and '@' in the user name and password (urllib.parse.quote(password, safe=''))"
        )
    if scheme != "unix":
        for host, port in _host_ports(rest[:end]):
            if not (port.isdigit() and int(port) < 65536):
                raise ValueError(
                    f"Redis URL {mask_url(url)!r}: port {port!r} of host {host!r} is not a "
                    "number from 0 to 65535"
                )
    return scheme


def _host_ports(netloc: str) -> list[tuple[str, str]]:
    hosts = netloc.rsplit("@", 1)[-1]
    out = []
    for item in hosts.split(","):
        host, colon, port = item.rpartition(":") if not item.endswith("]") else (item, "", "")
        out.append((host, port) if colon else (item, "6379"))
    return out


def connect(url: str, **options: Any) -> AnyRedis:
    """Return a redis-py client for ``url``; ``options`` go to the client constructor.

    Every error names the URL with its password masked, and chains no exception that
    would show it: a bad URL is a ValueError, refused credentials or TLS a
    ``CoordinationMisconfigured``, an unreachable cluster ``CoordinationUnavailable``.
    """
    scheme = _check(url)
    options.setdefault("socket_timeout", 5.0)
    options.setdefault("socket_connect_timeout", 2.0)
    problem = ""
    try:
        return _client(url, scheme, options)
    except ValueError as exc:  # redis-py's own parse errors may echo part of the URL
        problem = redact(str(exc), url)
    except (rexc.RedisError, RedisClusterException) as exc:  # a cluster connects at once
        raise as_kv_error("connect", exc) from exc
    raise ValueError(f"Redis URL {mask_url(url)!r} is not valid: {problem}")


def _client(url: str, scheme: str, options: dict[str, Any]) -> AnyRedis:
    if scheme in _PLAIN:
        return redis.Redis.from_url(url, retry=_no_client_retry(), **options)
    parts = urlsplit(url)
    if scheme in _CLUSTER:
        nodes = [ClusterNode(h, p or 6379) for h, p in _hosts(parts.netloc)]
        extra = _credentials(parts.netloc)
        if scheme.startswith("rediss"):
            extra["ssl"] = True
        return RedisCluster(startup_nodes=nodes, **extra, **options)
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError(
            f"sentinel URL {mask_url(url)!r} must name the service: .../service_name[/db]"
        )
    service = unquote(path[0])
    db = int(path[1]) if len(path) > 1 else int(parse_qs(parts.query).get("db", ["0"])[0])
    creds = _credentials(parts.netloc)
    sentinel = Sentinel(
        [(h, p or 26379) for h, p in _hosts(parts.netloc)],
        sentinel_kwargs={"socket_timeout": options["socket_timeout"]},
        **creds,
    )
    master_options = dict(options, db=db, retry=_no_client_retry())
    if scheme.startswith("rediss"):
        master_options["ssl"] = True
    return sentinel.master_for(service, **master_options)  # follows failovers


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)
