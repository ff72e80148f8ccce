"""What stops a run, for any loop (the built-in one and a user's): a stop asked by a signal (Ctrl-C, SIGTERM),
and the exceptions that say how a run ended."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator



class RunStopped(RuntimeError):
    """The run stopped before its last step (diverged); the file and the last finite checkpoint are kept."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the run at a step every process agreed on; the file is closed as interrupted
    and a checkpoint of that step is kept. (A second signal stops at once with `SignalStop`.)"""


class SignalStop(KeyboardInterrupt):
    """A second SIGINT or SIGTERM: stop at once. Its argument names the signal (the file says which)."""

    @property
    def signal_name(self) -> str:
        return self.args[0]


class StopRequest:
    """A stop asked of a loop, which the loop reads between its steps (or blocks): false until `ask` is called.
    `reason` says who asked ("SIGINT", "SIGTERM to process 1", ...), `signum` the signal, if one did (else 0).

        stop = StopRequest()
        with stop_on_signals(stop), recorder:
            for step in range(1, steps + 1):
                if stop:
                    break          # the recorder closes the file as interrupted, whole
                ...
    """

    def __init__(self) -> None:
        self.reason: str | None = None
        self.signum = 0

    def ask(self, reason: str, signum: int = 0) -> None:
        self.reason, self.signum = reason, signum

    def __bool__(self) -> bool:
        return self.reason is not None


@contextlib.contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[StopRequest]:
    """SIGINT (Ctrl-C) and SIGTERM ask `stop`; a second one stops at once (`SignalStop`); later ones are
    ignored, so that the run file closes whole (enter the recorder inside this context). Outside the main
    thread, where Python cannot take signals, it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    forced = []

    def handler(signum: int, frame: Any) -> None:
        if forced:
            return
        if stop:
            forced.append(signum)
            raise SignalStop(signal.Signals(signum).name)
        stop.ask(signal.Signals(signum).name, signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
