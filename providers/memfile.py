"""Secrets that a library insists on reading from a path, kept off the disk.

ssl (and requests, pylxd, ws4py on top of it) take a client key, certificate or CA bundle only as a file name. A file
under /tmp outlives a process that is killed before its exit handlers run (the engine SIGKILLs a plugin that is slow
to exit), leaving the key behind. A memfd is memory with a file descriptor: it has a path under /proc/self/fd for as
long as it is open and vanishes with the process, however that ends.
"""

from __future__ import annotations

import os
import weakref


class MemFile:
    """An anonymous in-memory file holding `data`, readable by this process at `.path` until closed."""

    def __init__(self, data: bytes | str, name: str = "cplb-secret"):
        if isinstance(data, str):
            data = data.encode()
        # MFD_CLOEXEC (the default): a child process does not inherit it.
        self.fd = os.memfd_create(name)
        os.write(self.fd, data)
        self.path = f"/proc/self/fd/{self.fd}"
        self._close = weakref.finalize(self, os.close, self.fd)

    def close(self) -> None:
        self._close()

    def __enter__(self) -> "MemFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
