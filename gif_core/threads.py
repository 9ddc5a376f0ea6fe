"""Thread control for the probe's small tensor products."""

from __future__ import annotations

import functools
from contextlib import contextmanager

import torch


@contextmanager
def single_thread():
    """Run a block on one intra-op thread.

    The probe's products take microseconds; with several OpenMP threads on a busy 2-core machine
    the threads' spin-waiting costs a hundred times more than the work itself. Note that the
    thread count is process-global: callers that share an engine across threads serialise.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def on_one_thread(fn):
    """Decorator form of :func:`single_thread`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with single_thread():
            return fn(*args, **kwargs)

    return wrapper
