"""A web handler that enqueues deduplicated jobs: plain WSGI (stdlib ``wsgiref``), no framework.

    python -m examples.web_producer

    POST /login                  sets the ``sid`` cookie (a celery-kv session)
    POST /orders/<id>/charge     202 {"task_id": ...}; a double submit gets the same task id;
                                 over 3 charges a minute per user: 429 with Retry-After

The same calls work from a Django or Flask view: the handler only needs the ``KV``
that ``install(app)`` returns and the task.
"""

from __future__ import annotations

import json
import math
import re
import threading
import urllib.request
from collections.abc import Callable, Iterable
from http.cookies import SimpleCookie
from typing import Any
from urllib.error import HTTPError
from wsgiref.simple_server import WSGIRequestHandler, make_server

from celery_kv import IdempotentTask, install
from examples.billing import journal
from examples.common import make_app, start_fresh, worker

app = make_app("web_producer")
kv = install(app)
sessions = kv.sessions("web", ttl=1800)
charges_per_user = kv.rate_limit("3/m", name="charges-per-user")
Environ = dict[str, Any]
StartResponse = Callable[..., Any]


@app.task(bind=True, base=IdempotentTask, idempotency_ttl=3600)
def charge(self: Any, order_id: str, user: str) -> dict[str, Any]:
    journal.record(kv, "charge", order_id=order_id, user=user)
    return {"order_id": order_id, "charged": True}


def respond(start_response: StartResponse, status: str, body: dict[str, Any],
            headers: Iterable[tuple[str, str]] = ()) -> list[bytes]:
    start_response(status, [("Content-Type", "application/json"), *headers])
    return [json.dumps(body).encode()]


def session_of(environ: Environ) -> tuple[str, dict[str, Any] | None]:
    """The session id from the cookie, and its data (reading it slides its TTL)."""
    cookie = SimpleCookie(environ.get("HTTP_COOKIE", ""))
    sid = cookie["sid"].value if "sid" in cookie else ""
    return sid, sessions.get(sid)  # an unknown or expired id is None, never an error


def login(start_response: StartResponse) -> list[bytes]:
    sid = sessions.create({"user": "alice", "orders": {}})
    return respond(start_response, "200 OK", {"user": "alice"},
                   [("Set-Cookie", f"sid={sid}; HttpOnly; SameSite=Lax")])


def charge_order(environ: Environ, start_response: StartResponse, order_id: str) -> list[bytes]:
    sid, session = session_of(environ)
    if session is None:
        return respond(start_response, "401 Unauthorized", {"error": "log in first"})
    decision = charges_per_user.hit(session["user"])  # a denied hit costs nothing
    if not decision.allowed:
        wait = str(math.ceil(decision.retry_after))
        return respond(start_response, "429 Too Many Requests", {"retry_after": wait},
                       [("Retry-After", wait)])
    # The client's Idempotency-Key when it sends one, else the order: a double submit, a
    # retry after a timeout, a second tab all get the first task's id.
    key = environ.get("HTTP_IDEMPOTENCY_KEY") or f"order-{order_id}"
    result = charge.apply_async((order_id, session["user"]), idempotency_key=key)
    session["orders"][order_id] = result.id
    sessions.save(sid, session)
    return respond(start_response, "202 Accepted", {"task_id": result.id})


def application(environ: Environ, start_response: StartResponse) -> list[bytes]:
    method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
    if method == "POST" and path == "/login":
        return login(start_response)
    order = re.fullmatch(r"/orders/([\w-]{1,64})/charge", path)
    if method == "POST" and order:
        return charge_order(environ, start_response, order[1])
    return respond(start_response, "404 Not Found", {"error": "not found"})


# -- the browser ----------------------------------------------------------------------------


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def post(base: str, path: str, cookie: str = "") -> tuple[int, dict[str, Any], Any]:
    """(status, JSON body, headers) of one POST."""
    request = urllib.request.Request(base + path, data=b"", method="POST",
                                     headers={"Cookie": cookie})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read()), reply.headers
    except HTTPError as error:
        return error.code, json.loads(error.read()), error.headers


def main() -> None:
    start_fresh(kv)
    server = make_server("127.0.0.1", 0, application, handler_class=QuietHandler)
    base = f"http://127.0.0.1:{server.server_port}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with worker(app, "examples.web_producer"):
        status, _, _ = post(base, "/orders/42/charge")
        print(f"POST /orders/42/charge without a session -> {status}")
        _, _, headers = post(base, "/login")
        cookie = headers["Set-Cookie"].split(";")[0]
        submits = [post(base, "/orders/42/charge", cookie) for _ in range(2)]  # double click
        ids = {body["task_id"] for _, body, _ in submits}
        print(f"POST /orders/42/charge twice -> {[s for s, _, _ in submits]}, "
              f"{len(ids)} task id")
        status, other, _ = post(base, "/orders/43/charge", cookie)
        print(f"POST /orders/43/charge -> {status}, a new task")
        status, _, headers = post(base, "/orders/44/charge", cookie)
        print(f"POST /orders/44/charge -> {status}, Retry-After: {headers['Retry-After']} "
              "(3 charges a minute per user)")
        for task_id in [*ids, other["task_id"]]:
            app.AsyncResult(task_id).get(timeout=30)
    server.shutdown()
    print(f"3 accepted POSTs -> {journal.count(kv, 'charge')} charges")


if __name__ == "__main__":
    main()
