"""Passwords never show: in URL masking, in every error (str, repr, chained causes), in logs,
in ``celery kv`` output and in ``celery report``. And a refused password or certificate is a
misconfiguration, raised at once, never an outage that is retried or run uncoordinated."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from celery.bin.celery import celery
from click.testing import CliRunner, Result

from celery_kv import (
    KV,
    CoordinationMisconfigured,
    CoordinationUnavailable,
    SingletonTask,
    install,
)
from celery_kv.store.retry import misconfiguration
from celery_kv.store.urls import MaskedURL, mask_url, redact
from celery_kv.testing import RedisServer, free_port, redis_server

PW = "Sup3rSecretPw"
ROOT = Path(__file__).resolve().parents[1]


def everything_said(exc: BaseException) -> str:
    """str, repr and the formatted traceback of ``exc`` and of every exception behind it."""
    said = []
    current: BaseException | None = exc
    while current is not None:
        said += [str(current), repr(current), *map(str, current.args)]
        current = current.__cause__ or current.__context__
    said.append("".join(traceback.format_exception(exc)))
    return "\n".join(said)


def assert_hidden(text: str, secret: str = PW) -> None:
    assert secret not in text, text


# -- masking -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "shown"), [
    (f"redis://:{PW}@h:6379/0", "redis://:***@h:6379/0"),
    (f"redis://{PW}@h:6379/0", "redis://***@h:6379/0"),
    (f"redis://user:{PW}@h:6379/0", "redis://user:***@h:6379/0"),
    (f"rediss://:{PW}@h:6380/0?ssl_cert_reqs=required", "rediss://:***@h:6380/0?ssl_cert_reqs=required"),
    (f"redis://h:6379/0?password={PW}&db=2", "redis://h:6379/0?password=***&db=2"),
    (f"redis://u:{PW}@h/0?password={PW}", "redis://u:***@h/0?password=***"),
    (f"redis+sentinel://u:{PW}@a:26379,b:26379/mymaster/0",
     "redis+sentinel://u:***@a:26379,b:26379/mymaster/0"),
    (f"redis+cluster://:{PW}@a:7000,b:7001", "redis+cluster://:***@a:7000,b:7001"),
    (f"redis+cluster://u:{PW}@a:7000,u:{PW}@b:7001", "redis+cluster://u:***@b:7001"),
    (f"unix:///tmp/redis.sock?db=0&password={PW}", "unix:///tmp/redis.sock?db=0&password=***"),
    (f"unix://:{PW}@/tmp/redis.sock?db=0", "unix://:***@/tmp/redis.sock?db=0"),
    (f"redis://:{PW[:4]}/{PW[4:]}@h:6379/0", "redis://:***@h:6379/0"),  # unencoded '/'
    (f"redis://:{PW[:4]}?{PW[4:]}@h:6379/0", "redis://:***@h:6379/0"),  # unencoded '?'
    (f"redis://:{PW}%40x@h/0", "redis://:***@h/0"),
    (f"sentinel://:{PW}@h1:26379;sentinel://:{PW}@h2:26379/0",
     "sentinel://:***@h1:26379;sentinel://:***@h2:26379/0"),
    ("redis://h:6379/0", "redis://h:6379/0"),
])
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown
    assert_hidden(mask_url(url))
    assert_hidden(repr(MaskedURL(url)))
    assert MaskedURL(url) == url and str(MaskedURL(url)) == url


def test_redact_removes_every_form_of_the_secret() -> None:
    url = f"redis://u:{PW}%21@h/0?password=q{PW}"
    text = f"failed for {url}; password {PW}! and q{PW} (and {PW}%21)"
    assert_hidden(redact(text, url))


# -- errors of the client ------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "needle"), [
    (f"ftp://:{PW}@h/0", "not supported"),
    (f"redis://:{PW}@h:notaport/0", "port 'notaport'"),
    (f"redis://:{PW}@h:99999/0", "port '99999'"),
    (f"redis://:{PW[:4]}/{PW[4:]}@h:6379/0", "percent-encode"),
    (f"redis+sentinel://:{PW}@a:26379", "must name the service"),
    (f"redis://:{PW}@h/0?socket_timeout=abc", "is not valid"),
    (f":{PW}@h:6379/0", "is not a URL"),
])
def test_bad_urls_name_the_problem_not_the_password(url: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle) as caught:
        KV.from_url(url)
    assert_hidden(everything_said(caught.value))


def test_unreachable_host(caplog: pytest.LogCaptureFixture) -> None:
    kv = KV.from_url(f"redis://u:{PW}@127.0.0.1:{free_port()}/0", retry_deadline=0.2)
    with caplog.at_level(logging.DEBUG), pytest.raises(CoordinationUnavailable) as caught:
        kv.lock("x", ttl=5).acquire()
    assert_hidden(everything_said(caught.value))
    assert_hidden(caplog.text)
    assert_hidden(repr(kv))


@pytest.fixture(scope="module")
def guarded_srv() -> Iterator[RedisServer]:
    with redis_server(extra=["--requirepass", PW]) as server:
        yield server


@pytest.mark.parametrize("userinfo", [f":wrong{PW}", f"default:wrong{PW}", f"nobody:wrong{PW}",
                                      ""])
def test_a_wrong_password_is_misconfigured_at_once(
    guarded_srv: RedisServer, userinfo: str, caplog: pytest.LogCaptureFixture
) -> None:
    at = "@" if userinfo else ""
    kv = KV.from_url(f"redis://{userinfo}{at}127.0.0.1:{guarded_srv.port}/0",
                     retry_deadline=5.0)
    started = time.monotonic()
    with caplog.at_level(logging.DEBUG), pytest.raises(CoordinationMisconfigured) as caught:
        kv.lock("x", ttl=5).acquire()
    assert time.monotonic() - started < 1.0  # not retried for the 5 s deadline
    assert "authentication" in str(caught.value)
    assert "retrying" not in caplog.text
    assert_hidden(everything_said(caught.value), f"wrong{PW}")
    assert_hidden(caplog.text, f"wrong{PW}")
    assert not isinstance(caught.value, CoordinationUnavailable)


def test_the_right_password_works(guarded_srv: RedisServer) -> None:
    kv = KV.from_url(f"redis://:{PW}@127.0.0.1:{guarded_srv.port}/0")
    assert kv.lock("x", ttl=5).acquire()


def test_a_task_is_not_published_uncoordinated_on_a_wrong_password(
    guarded_srv: RedisServer,
) -> None:
    app = Celery("misconf", broker="memory://")
    app.conf.kv_redis_url = f"redis://:wrong{PW}@127.0.0.1:{guarded_srv.port}/0"
    app.conf.kv_on_unavailable = "run"
    app.conf.kv_prefix = "misconf"
    install(app)
    sent: list[object] = []

    @app.task(base=SingletonTask, name="misconf.job", shared=False)
    def job(n: int) -> int:
        return n

    from celery import signals

    def record(sender: object = None, **_: object) -> None:
        sent.append(sender)

    signals.before_task_publish.connect(record, weak=False)
    try:
        with pytest.raises(CoordinationMisconfigured) as caught:
            job.apply_async((1,))
        with pytest.raises(CoordinationMisconfigured):
            job.apply((1,)).get()
    finally:
        signals.before_task_publish.disconnect(record)
    assert sent == []
    assert_hidden(everything_said(caught.value), f"wrong{PW}")


# -- TLS ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: no certificate for the TLS server")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(folder / "key.pem"), "-out", str(folder / "cert.pem"), "-days", "1",
                    "-subj", "/CN=localhost"], check=True, capture_output=True)
    port = free_port()
    extra = ["--tls-port", str(port), "--tls-cert-file", str(folder / "cert.pem"),
             "--tls-key-file", str(folder / "key.pem"), "--tls-ca-cert-file",
             str(folder / "cert.pem"), "--tls-auth-clients", "no", "--requirepass", PW]
    with redis_server(extra=extra) as server:
        assert server.process.poll() is None
        yield port, folder / "cert.pem"


def test_an_untrusted_certificate_is_misconfigured_at_once(tls_srv: tuple[int, Path]) -> None:
    port, cert = tls_srv
    kv = KV.from_url(f"rediss://:{PW}@localhost:{port}/0", retry_deadline=5.0)
    started = time.monotonic()
    with pytest.raises(CoordinationMisconfigured, match="certificate") as caught:
        kv.lock("x", ttl=5).acquire()
    assert time.monotonic() - started < 1.0
    assert_hidden(everything_said(caught.value))
    trusted = KV.from_url(f"rediss://:{PW}@localhost:{port}/0?ssl_ca_certs={cert}")
    assert trusted.lock("x", ttl=5).acquire()


def test_misconfiguration_classifies_redis_py_errors() -> None:
    import ssl

    import redis.exceptions as rexc

    assert misconfiguration(rexc.AuthenticationError("invalid password"))
    assert misconfiguration(rexc.AuthenticationWrongNumberOfArgsError("wrong number"))
    assert misconfiguration(rexc.NoPermissionError("no permissions"))
    try:
        try:
            raise ssl.SSLCertVerificationError(1, "certificate verify failed")
        except OSError as exc:
            raise rexc.ConnectionError("Error 1 connecting to h:1.") from exc
    except rexc.ConnectionError as wrapped:
        assert misconfiguration(wrapped)
    for outage in (rexc.ConnectionError("Error 111 connecting to h:1. Connection refused."),
                   rexc.TimeoutError("Timeout connecting to server"), ssl.SSLEOFError()):
        assert misconfiguration(outage) is None


# -- the CLI and celery report --------------------------------------------------------------------


def invoke(*args: str) -> Result:
    return CliRunner().invoke(celery, list(args), catch_exceptions=False)


def test_cli_hides_the_password_on_every_failure(
    guarded_srv: RedisServer, tls_srv: tuple[int, Path], prefix: str
) -> None:
    port = guarded_srv.port
    urls = [
        f"ftp://:{PW}@h/0", f"redis://:{PW}@h:nope/0", f"redis://:{PW}@127.0.0.1:{free_port()}/0",
        f"redis://:wrong{PW}@127.0.0.1:{port}/0", f"redis://u:{PW}@127.0.0.1:{port}/0",
        f"rediss://:{PW}@localhost:{tls_srv[0]}/0", f"redis://:{PW[:3]}/{PW[3:]}@h/0",
        f"redis://127.0.0.1:{port}/0?password=wrong{PW}",
    ]
    for url in urls:
        for command in (["doctor"], ["locks"], ["purge", "--yes"],
                        ["limits", "--rate", "5/m", "t"]):
            result = invoke("kv", *command, "--url", url, "--prefix", prefix)
            assert result.exit_code == 1, (url, result.output)
            assert "Traceback" not in result.output
            assert len(result.output.strip().splitlines()) == 1, result.output
            assert_hidden(result.output)
    ok = invoke("kv", "doctor", "--url", f"redis://:{PW}@127.0.0.1:{port}/0", "--prefix",
                prefix, "--json")
    assert ok.exit_code == 0 and ":***@" in ok.output
    assert_hidden(ok.output)


APP = f'''
from celery import Celery
from celery_kv import install

app = Celery("reported", broker="redis://:{PW}@127.0.0.1:1/0")
app.conf.kv_redis_url = "redis://u:{PW}@127.0.0.1:1/1?password={PW}"
app.conf.result_backend = "redis://:{PW}@127.0.0.1:1/2"
install(app)
'''


def test_celery_report_masks_kv_redis_url(tmp_path: Path) -> None:
    (tmp_path / "reported.py").write_text(APP)
    run = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "reported", "report"], cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{tmp_path}:{ROOT}"},
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "kv_redis_url: '********'" in run.stdout
    assert_hidden(run.stdout + run.stderr)


def test_celery_inspect_conf_masks_kv_redis_url() -> None:
    """``celery inspect conf``: a worker answers with ``jsonify(app.conf.table())``, which
    writes a str (a ``MaskedURL`` too) as it is: the name must be censored."""
    from celery import Celery
    from celery.utils.serialization import jsonify

    from celery_kv import install

    app = Celery("inspected", broker="memory://", set_as_current=False)
    app.conf.kv_redis_url = f"redis://u:{PW}@127.0.0.1:1/1"
    install(app)
    answer = json.dumps(jsonify(app.conf.table(with_defaults=True), unknown_type_filter=repr))
    assert "kv_redis_url" in answer
    assert_hidden(answer)
    assert str(app.conf.kv_redis_url) == f"redis://u:{PW}@127.0.0.1:1/1", "the value is kept"
