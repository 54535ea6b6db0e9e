"""The identity memo: bounded, and never lets equal-but-different keys share an entry."""

from __future__ import annotations

import pytest

from celery_kv.store import keys


def test_memo_stays_bounded() -> None:
    for i in range(3 * keys._MEMO_MAX):
        keys.identity(f"tenant-{i}")
        keys.identity(("ns", i))
    assert len(keys._memo) <= keys._MEMO_MAX


def test_long_parts_are_not_remembered() -> None:
    long_key = "x" * 10_000
    assert keys.identity(long_key) == keys._identity(long_key)
    assert long_key not in keys._memo


def test_equal_keys_of_other_types_do_not_share_an_entry() -> None:
    assert keys.identity(1) == keys.identity(1)  # now remembered
    assert keys.identity((1,)) == keys.identity((1,))
    for bad in (True, 1.0, (True,), ("a", 1.0)):
        with pytest.raises(TypeError):
            keys.identity(bad)  # type: ignore[arg-type]
    assert keys.identity("1") != keys.identity(1) != keys.identity(b"1")


def test_remembered_identity_matches_a_fresh_one() -> None:
    for key in ("a:b", ("a", "b"), b"\xff{}", "", (), ("é", 7, b"")):
        assert keys.identity(key) == keys.identity(key) == keys._identity(key)
