"""Redis URLs shown to people: the password never appears, in a message, a log or a report.

``mask_url`` keeps what helps an operator (scheme, user name, hosts, db, options) and
replaces every secret with ``***``: the password of the userinfo (also on sentinel and
cluster multi-host netlocs, and on ``unix://``), and ``?password=`` style query options.
It fails closed: anything before the last ``@`` counts as userinfo, so a password with an
unencoded ``/``, ``?`` or ``#`` is still hidden.

``redact`` scrubs those same secrets out of any text (an error message of a library that
echoed part of the URL). ``MaskedURL`` is a ``str`` equal to the URL whose ``repr`` is
masked, for settings that Celery prints with ``repr`` (``celery report``).
"""

from __future__ import annotations

import re
from urllib.parse import unquote

MASK = "***"
# query options whose value is a secret: password, ssl_password, sentinel_password, token...
_SECRET_OPTION = re.compile(r"pass|secret|token|credential", re.IGNORECASE)
_QUERY_SPLIT = re.compile(r"([&;])")


def _split(url: str) -> tuple[str, str]:
    """(``scheme://`` or '', the rest); a value without ``://`` is all rest."""
    scheme, sep, rest = url.partition("://")
    return (scheme + sep, rest) if sep else ("", url)


def _userinfo(rest: str) -> tuple[str | None, str]:
    """(userinfo or None, what follows it): everything up to the last '@' (fails closed)."""
    head, at, tail = rest.rpartition("@")
    return (head, tail) if at else (None, rest)


def _shown_user(userinfo: str) -> str:
    user, colon, _ = userinfo.partition(":")
    if colon and not any(c in user for c in "/?#@"):
        return f"{user}:{MASK}"
    return MASK


def _mask_query(rest: str) -> str:
    path, q, query = rest.partition("?")
    if not q:
        return rest
    pieces = _QUERY_SPLIT.split(query)
    for i, piece in enumerate(pieces):
        name, eq, _value = piece.partition("=")
        if eq and _SECRET_OPTION.search(unquote(name)):
            pieces[i] = f"{name}={MASK}"
    return f"{path}?{''.join(pieces)}"


def mask_url(url: object) -> str:
    """``url`` with every password replaced by ``***`` (for messages, logs and reports)."""
    if url is None:
        return "None"
    if not isinstance(url, str):
        return f"<{type(url).__name__}>"
    if ";" in url and "://" in url.split(";", 1)[1]:  # Celery-style list of URLs
        return ";".join(mask_url(part) for part in url.split(";"))
    scheme, rest = _split(url)
    userinfo, tail = _userinfo(rest)
    if userinfo is not None:
        rest = f"{_shown_user(userinfo)}@{tail}"
    return scheme + _mask_query(rest)


def secrets_in(url: object) -> list[str]:
    """Every secret of ``url`` as it may appear in text: raw and percent-decoded."""
    if not isinstance(url, str):
        return []
    found: list[str] = []
    for one in url.split(";"):
        _scheme, rest = _split(one)
        userinfo, tail = _userinfo(rest)
        if userinfo is not None:
            user, colon, password = userinfo.partition(":")
            found += [password] if colon else [user]
            if colon and any(c in user for c in "/?#@"):
                found.append(userinfo)
        query = (tail if userinfo is not None else rest).partition("?")[2]
        for piece in _QUERY_SPLIT.split(query):
            name, eq, value = piece.partition("=")
            if eq and _SECRET_OPTION.search(unquote(name)):
                found.append(value)
    out: set[str] = set()
    for secret in found:
        out.update(s for s in (secret, unquote(secret)) if s)
    return sorted(out, key=len, reverse=True)  # longest first: a secret's part never wins


def redact(text: str, *urls: object) -> str:
    """``text`` with each URL masked and every secret of the URLs replaced by ``***``."""
    for url in urls:
        if isinstance(url, str) and url:
            text = text.replace(url, mask_url(url))
    for url in urls:
        for secret in secrets_in(url):
            text = text.replace(secret, MASK)
    return text


class MaskedURL(str):
    """A URL that is the URL everywhere (``==``, ``str()``, connecting) except in ``repr``.

    Celery's ``report`` and ``app.conf.humanize()`` print settings with ``repr``, and
    censor only names that look secret; ``kv_redis_url`` is kept as one of these.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(mask_url(str(self)))


__all__ = ["MASK", "MaskedURL", "mask_url", "redact", "secrets_in"]
