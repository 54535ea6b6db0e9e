"""The dashboard's WSGI app and its server, on the standard library alone.

``Dashboard`` answers the page (``index.html``, package data) and a few JSON endpoints
the page polls; ``make_server`` serves it with ``wsgiref`` and one thread per request,
so a slow read does not stall the page's other requests. No framework: the page is one
file with its script, and every reading lives in ``sources`` and the library.

Its rules: everything is read-only except ``POST /api/unlock``, which answers 403 unless
the dashboard was started with ``allow_unlock`` and the request carries the start-up
token (compared with ``hmac.compare_digest``). Messages never carry a password: Redis
errors are redacted against the URLs the dashboard was given, and the page shows the
target as ``mask_url`` gives it.
"""

from __future__ import annotations

import hmac
import json
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import redis.exceptions as rexc

from ..celery import listing
from ..errors import KVError
from ..kv import KV
from ..store.urls import redact
from . import sources

StartResponse = Callable[..., Any]
PAGE_SIZE = 50
MAX_PAGE = 500
POLL_MS = 1000
DOCTOR_EVERY = 15.0  # seconds between two doctor runs (it SCANs every key of the prefix)
TOKEN_HEADER = "HTTP_X_UNLOCK_TOKEN"
MAX_BODY = 64 * 1024


class HTTPError(Exception):
    """An answer other than 200, with a one-line message for the page."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def new_token() -> str:
    """The unlock token printed at start-up: 32 random bytes, URL-safe."""
    return secrets.token_urlsafe(32)


class Dashboard:
    """The WSGI app: ``GET /`` is the page, ``/api/...`` its JSON."""

    def __init__(self, kv: KV, app: Any = None, *, where: str, allow_unlock: bool = False,
                 token: str | None = None, secrets_: Sequence[Any] = (),
                 poll_ms: int = POLL_MS) -> None:
        if allow_unlock and not token:
            raise ValueError("allow_unlock needs a token")
        self.kv = kv
        self.app = app
        self.where = where
        self.allow_unlock = allow_unlock
        self._token = token or ""
        self._secrets = list(secrets_)
        self.poll_ms = poll_ms
        self._doctor: tuple[float, list[dict[str, str]]] | None = None
        self._doctor_lock = threading.Lock()
        self._page = resources.files(__package__).joinpath("index.html").read_text("utf-8")
        self._routes: dict[tuple[str, str], Callable[[dict[str, list[str]]], Any]] = {
            ("GET", "/api/config"): lambda _q: self.config(),
            ("GET", "/api/locks"): self._locks,
            ("GET", "/api/rates"): lambda _q: sources.rate_series(self.kv, self.app),
            ("GET", "/api/limit"): self._limit,
            ("GET", "/api/idempotency"): self._idempotency,
            ("GET", "/api/waiting"): lambda _q: sources.waiting(self.kv, self.app),
            ("GET", "/api/doctor"): lambda _q: self.doctor(),
        }

    # -- WSGI --------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse
                 ) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/") or "/"
        try:
            if path == "/" and method in ("GET", "HEAD"):
                return self._send(start_response, "200 OK", self.page(),
                                  "text/html; charset=utf-8")
            if path == "/api/unlock":
                if method != "POST":
                    raise HTTPError("405 Method Not Allowed", "unlock takes a POST")
                body = self.unlock(environ)
            else:
                route = self._routes.get((method, path))
                if route is None:
                    known = any(p == path for _m, p in self._routes)
                    raise HTTPError("405 Method Not Allowed" if known else "404 Not Found",
                                    f"{method} {path} is not served here")
                body = route(parse_qs(environ.get("QUERY_STRING", "")))
            return self._json(start_response, "200 OK", body)
        except HTTPError as exc:
            return self._json(start_response, exc.status, {"error": self._clean(exc)})
        except sources.NotFound as exc:
            return self._json(start_response, "404 Not Found", {"error": self._clean(exc)})
        except (ValueError, TypeError) as exc:
            return self._json(start_response, "400 Bad Request", {"error": self._clean(exc)})
        except (rexc.RedisError, KVError) as exc:
            return self._json(start_response, "503 Service Unavailable",
                              {"error": self._clean(f"Redis at {self.where}: {exc}")})
        except Exception as exc:
            return self._json(start_response, "500 Internal Server Error",
                              {"error": self._clean(f"unexpected {type(exc).__name__}: {exc}")})

    def _clean(self, what: object) -> str:
        return redact(" ".join(str(what).split()), *self._secrets)

    @staticmethod
    def _send(start_response: StartResponse, status: str, text: str,
              content_type: str) -> list[bytes]:
        data = text.encode("utf-8")
        start_response(status, [("Content-Type", content_type),
                                ("Content-Length", str(len(data))),
                                ("Cache-Control", "no-store"),
                                ("X-Content-Type-Options", "nosniff"),
                                ("X-Frame-Options", "DENY"),
                                ("Referrer-Policy", "no-referrer")])
        return [data]

    def _json(self, start_response: StartResponse, status: str, body: Any) -> list[bytes]:
        return self._send(start_response, status, json.dumps(body, default=str),
                          "application/json")

    # -- the page and its data ------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return {"where": self.where, "prefix": self.kv.prefix,
                "allow_unlock": self.allow_unlock, "page_size": PAGE_SIZE,
                "poll_ms": self.poll_ms, "minutes": sources.MINUTES,
                "tasks": sources.catalogue(self.app)}

    def page(self) -> str:
        """The page, its configuration inlined (``<`` escaped, so no value closes the tag)."""
        inline = json.dumps(self.config()).replace("<", "\\u003c")
        return self._page.replace("__CONFIG__", inline)

    def _locks(self, query: dict[str, list[str]]) -> dict[str, Any]:
        offset = _int(query, "offset", 0, 0, None)
        limit = _int(query, "limit", PAGE_SIZE, 1, MAX_PAGE)
        total, rows = listing.locks_page(self.kv.store, offset, limit)
        return {"total": total, "offset": offset, "limit": limit, "rows": rows,
                "semaphores": listing.semaphores(self.kv.store)}

    def _limit(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        return sources.limit_state(self.kv, self.app, _str(query, "task"),
                                   _str(query, "identity", ""))

    def _idempotency(self, query: dict[str, list[str]]) -> dict[str, Any]:
        return sources.idempotency_record(self.kv, self.app, _str(query, "task", ""),
                                          _str(query, "namespace", ""), _str(query, "key"))

    def doctor(self) -> list[dict[str, str]]:
        """Doctor's findings, run at most every ``DOCTOR_EVERY`` seconds."""
        with self._doctor_lock:
            if self._doctor is None or time.monotonic() - self._doctor[0] > DOCTOR_EVERY:
                self._doctor = (time.monotonic(), sources.doctor_findings(self.kv, self.where))
            return self._doctor[1]

    # -- the one write ----------------------------------------------------------------------

    def unlock(self, environ: dict[str, Any]) -> dict[str, Any]:
        """Break one lock: only when allowed, with the start-up token, by its Redis key."""
        if not self.allow_unlock:
            raise HTTPError("403 Forbidden", "this dashboard is read-only (start it with "
                            "--allow-unlock to break locks)")
        given = str(environ.get(TOKEN_HEADER, ""))
        if not hmac.compare_digest(given.encode(), self._token.encode()):
            raise HTTPError("403 Forbidden", "a valid unlock token is needed (the one printed "
                            "when the dashboard started)")
        key = _body(environ).get("key")
        if not isinstance(key, str) or not listing.is_lock_key(self.kv.store, key):
            raise ValueError(f"{key!r} is not a lock key under '{self.kv.prefix}:'")
        before = listing.read_lock(self.kv.store, key)
        if not listing.break_lock_key(self.kv.store, key):
            raise sources.NotFound(f"no lock {key!r} is held")
        return {"key": key, "released": True, "owner": before and before["owner"],
                "fence": before and before["fence"]}


def _body(environ: dict[str, Any]) -> dict[str, Any]:
    try:
        size = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        size = 0
    if not 0 < size <= MAX_BODY:
        raise ValueError("the request needs a JSON body of at most 64 KiB")
    try:
        data = json.loads(environ["wsgi.input"].read(size))
    except ValueError:
        raise ValueError("the request body is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("the request body must be a JSON object")
    return data


def _str(query: dict[str, list[str]], name: str, default: str | None = None) -> str:
    values = query.get(name)
    if values:
        return values[0]
    if default is None:
        raise ValueError(f"the query needs {name}=")
    return default


def _int(query: dict[str, list[str]], name: str, default: int, low: int,
         high: int | None) -> int:
    raw = _str(query, name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name}={value} must be between {low} and {high or 'any'}")
    return value


# -- the server -----------------------------------------------------------------------------


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Quiet(WSGIRequestHandler):
    """No line per request on stderr (the page polls every second)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(dashboard: Dashboard, host: str, port: int) -> WSGIServer:
    """A bound server (``serve_forever`` to run it); OSError when the address is taken
    or cannot be bound."""
    server_class = _Server6 if ":" in host else _Server
    return make_server(host, port, dashboard, server_class=server_class, handler_class=_Quiet)


__all__ = ["Dashboard", "HTTPError", "new_token", "serve"]
