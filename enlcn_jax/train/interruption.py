"""Ctrl-C during training: the step in flight and its save finish, then training stops."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

from absl import logging


class TrainingInterrupted(RuntimeError):
    """Ctrl-C (SIGINT) during training, raised once the checkpoint in flight is written."""


@contextlib.contextmanager
def deferred_ctrl_c() -> Iterator[threading.Event]:
    """Within it, the first Ctrl-C sets the yielded event, which the loop checks after each step
    (so a save is never cut in half); a second one interrupts at once. Off the main thread
    (where signals cannot be handled) the event is never set. Restores Python's handler on
    exit."""
    requested = threading.Event()
    on_main_thread = threading.current_thread() is threading.main_thread()
    if on_main_thread:
        def on_sigint(signum, frame):
            del signum, frame
            requested.set()
            logging.warning('Ctrl-C: stopping after this step (press again to stop now)')
            signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGINT, on_sigint)
    try:
        yield requested
    finally:
        if on_main_thread:
            signal.signal(signal.SIGINT, signal.default_int_handler)
