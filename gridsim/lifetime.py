"""Helper processes that end with the process that started them.

A run starts a broker, training children and (``--workers``) meter processes. Its
normal exits, errors and Ctrl-C stop them explicitly; :func:`die_with_parent`
covers the rest, a run killed outright (``kill -9``, the OOM killer).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int, sig: int = signal.SIGTERM) -> None:
    """Have the kernel send this process ``sig`` when its parent (pid ``parent``)
    dies; at once if it has died already, which the kernel would not notice (Linux;
    a no-op elsewhere).

    Linux clears the setting when the process changes its credentials (a broker
    that drops root), and ties it to the parent *thread*: call it in the child,
    and start children from a thread that lives as long as they should.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig)
        # Killed while this process was starting: it has been handed to another
        # parent, and no signal will come.
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)
