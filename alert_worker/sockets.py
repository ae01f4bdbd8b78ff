"""Cutting a socket another thread is blocked on: the one way to end a blocking call from outside.

A thread waiting in ``recv``/``poll`` on a socket (http.client reading headers, libpq waiting for an answer)
cannot be interrupted by Python: an asynchronous exception waits for the C call to return, a per-read timeout
restarts with every byte. ``shutdown(SHUT_RDWR)`` on the socket wakes the blocked call at once with
end-of-file or an error, and the owner then closes its connection as broken. It is done on a duplicate of the
descriptor, so the owner's socket object (an ``SSLSocket``, libpq's descriptor) is never touched from here.
"""

from __future__ import annotations

import contextlib
import os
import socket


def cut_socket(fd: int) -> bool:
    """Shut down both directions of the socket behind descriptor ``fd``; ``False`` if it is no socket now."""
    if fd < 0:
        return False
    try:
        copy = os.dup(fd)
    except OSError:  # closed meanwhile
        return False
    try:
        duplicate = socket.socket(fileno=copy)
    except OSError:  # not a socket (any more)
        os.close(copy)
        return False
    try:
        duplicate.shutdown(socket.SHUT_RDWR)
    except OSError:  # already shut down or never connected
        return False
    finally:
        with contextlib.suppress(OSError):
            duplicate.close()  # closes the duplicate only; the owner's descriptor stays open (and shut down)
    return True
