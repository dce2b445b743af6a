"""restore_command._RecoveryNap: a restore that waits for recovery to end looks again as
soon as the server removes its signal file, and never spins where it cannot see one."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgbackup.engine import restore_command
from pgbackup.engine.restore_command import _RecoveryNap


def naps(monkeypatch: pytest.MonkeyPatch, on_sleep: list[object]) -> list[float]:
    """Record each sleep; the i-th sleep runs on_sleep[i] (a callable) when there is one."""
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        if len(slept) < len(on_sleep) and callable(on_sleep[len(slept)]):
            on_sleep[len(slept)]()  # type: ignore[operator]
        slept.append(seconds)

    monkeypatch.setattr(restore_command.time, "sleep", sleep)
    return slept


def test_the_pause_ends_when_the_server_removes_its_signal_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    signal = tmp_path / "recovery.signal"
    signal.write_text("")
    slept = naps(monkeypatch, [None, None, signal.unlink])
    nap = _RecoveryNap(tmp_path)
    nap()
    assert slept == [_RecoveryNap.STEP] * 3  # woke at the third look, not after 0.3 s
    nap()  # promoting: the next question comes after one short step
    assert slept[3:] == [_RecoveryNap.STEP]


def test_a_standby_signal_counts_and_a_long_recovery_pauses_about_0_3_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "standby.signal").write_text("")
    slept = naps(monkeypatch, [])
    clock = iter(range(1000))
    monkeypatch.setattr(restore_command.time, "monotonic", lambda: next(clock) * 0.02)
    _RecoveryNap(tmp_path)()
    assert len(slept) == 14 and all(s == _RecoveryNap.STEP for s in slept)  # 0.3 s in 20 ms looks


def test_a_data_directory_without_a_visible_signal_file_keeps_the_plain_pause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept = naps(monkeypatch, [])
    nap = _RecoveryNap(tmp_path / "in-a-container")
    nap()
    nap()
    assert slept == [_RecoveryNap.SECONDS] * 2
