"""Decode worker processes that die with their parent.

A ``ProcessPoolExecutor`` worker waits on a queue whose write end it holds itself, so when the parent is killed
(SIGKILL, OOM) nothing ever wakes it: the workers and multiprocessing's resource tracker (which exits only when
every holder of its pipe is gone) lived on, ~290 MB each, after every crash. :func:`die_with_parent` is the
pool ``initializer``: on Linux the kernel sends SIGKILL when the parent exits (``PR_SET_PDEATHSIG``), and on
every platform a daemon thread polls the parent pid and exits when it changes (the kernel signal is tied to the
*thread* that spawned the worker, and is not available elsewhere, so the poll is the guarantee).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

__all__ = ["POLL_S", "die_with_parent", "worker_pool"]

#: Seconds between parent checks: a worker outlives its parent by at most about this long.
POLL_S = 0.5
_PR_SET_PDEATHSIG = 1


def _watch(parent: int) -> None:
    while True:
        time.sleep(POLL_S)
        if os.getppid() != parent:
            os._exit(1)  # nothing to clean up: a worker holds no state worth saving without its parent


def die_with_parent(parent: int) -> None:
    """Pool initializer: make this worker exit when ``parent`` (the pid that started it) is gone."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # no prctl (unusual libc): the poll below still applies
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch, args=(parent,), name="spanprism-parent-watch", daemon=True).start()


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """A spawn-context process pool whose workers die with this process."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=die_with_parent,
                               initargs=(os.getpid(),))  # fmt: skip
