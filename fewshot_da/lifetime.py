"""Child processes that end when their parent dies: a parent-death signal (Linux) and a parent-pid watch.

A worker blocked on a queue never learns that its parent was killed (kill -9, an OOM kill): the queue's pipe stays
open because the worker holds both of its ends. `end_with_parent` is called first thing in such a worker.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _parent_death_signal(signum: int) -> bool:
    """Ask the Linux kernel to send `signum` to this process when its parent exits; False where unsupported.

    The kernel ties it to the parent thread that created this process, so call it only in children that the
    parent's long-lived (main) thread starts."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int, poll_s: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(poll_s)
    os._exit(1)  # the parent is gone: nobody reads what this process would produce


def end_with_parent(parent_pid: int, *, death_signal: bool = True, poll_s: float = 1.0) -> None:
    """End this process when process `parent_pid` (its parent) dies.

    death_signal: also ask the kernel for SIGTERM at the parent's death (Linux; immediate). Either way a daemon
    thread compares getppid() with `parent_pid` every `poll_s` seconds and exits the process (code 1) once the
    parent has gone, which covers other systems and a parent that died before this call. SIGTERM is given its
    default action (terminate) so the signal ends the process even where a library had installed a handler.
    """
    if death_signal:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid, poll_s), daemon=True, name="watch-parent").start()
