"""pgbackup/signals: SIGTERM as Ctrl-C, and interrupts held across a spawn (no server)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from pgbackup.signals import interrupts_deferred, terminate_as_interrupt


def test_sigterm_is_raised_as_keyboard_interrupt_and_the_handler_comes_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), terminate_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises at the next bytecode
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_stop_during_a_spawn_arrives_once_the_child_is_held() -> None:
    """The stop lands while Popen runs; the interrupt is raised after it returned, so the
    caller has the pid and can stop the child (engine/backup.run_basebackup)."""
    child: subprocess.Popen[bytes] | None = None
    with pytest.raises(KeyboardInterrupt), terminate_as_interrupt():
        try:
            with interrupts_deferred():
                os.kill(os.getpid(), signal.SIGTERM)  # held: nothing raised here
                child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
                assert child.poll() is None
            pytest.fail("the held SIGTERM was not delivered when the block ended")
        finally:
            assert child is not None  # the interrupt came after Popen returned
            child.kill()
            child.wait()


def test_each_held_signal_is_delivered_once_and_the_handlers_come_back() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(KeyboardInterrupt), interrupts_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
    assert {s: signal.getsignal(s) for s in before} == before


def test_nothing_held_means_nothing_raised() -> None:
    with interrupts_deferred():
        pass
