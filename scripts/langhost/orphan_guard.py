"""Make a plugin process (language host, dynamic provider) end when the Pulumi CLI that started it is gone.

The CLI stops its plugins when an operation ends. When the CLI itself is killed (SIGKILL, OOM, a closed CI
runner), they would be left running, re-parented to init, each holding a gRPC port and the program's memory.
The CLI starts every plugin in a process group of its own, so killing the CLI's group does not reach them.
A daemon thread polls the parent pid (one syscall a second) rather than using PR_SET_PDEATHSIG, which fires
when the parent *thread* that forked exits, and a Go CLI forks from whichever thread it happens to run on.
"""

from __future__ import annotations

import os
import threading
import time


def exit_with_parent(interval: float = 1.0) -> threading.Thread:
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                # Exit handlers first: Incus clients remove the private files that hold the client key.
                import atexit

                atexit._run_exitfuncs()
                os._exit(1)

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread
