"""The dynamic-provider plugin: `python -m pulumi.dynamic <engine>`, ended with the CLI that started it."""

import os
import runpy
import sys

from orphan_guard import exit_with_parent  # this script's directory is sys.path[0]

# Calls a provider may hold for minutes at once: a rollout's restart waits (up to 600 s) until the other members are
# healthy, and those members get healthy through other calls of the same plugin. pulumi.dynamic serves the engine
# from a pool of 4 threads, so 4 such waits starved every other call, the ones they waited for included (seen: a
# certificate renewal together with `count` 3 -> 4 hung 600 s on four controller restarts waiting for the new member,
# whose etcd join never got a thread). The engine bounds how many steps run at once; the plugin should not.
PROVIDER_THREADS = 64


def widen_the_server_pool() -> None:
    from concurrent import futures

    class _Pool(futures.ThreadPoolExecutor):
        def __init__(self, max_workers=None, *args, **kwargs):
            super().__init__(max(max_workers or 0, PROVIDER_THREADS), *args, **kwargs)

    futures.ThreadPoolExecutor = _Pool


if __name__ == "__main__":
    # As under `python -m`: the working directory (the program directory) first, so the providers package
    # imports from there.
    sys.path[0] = os.getcwd()
    exit_with_parent()
    # The CLI ends its plugins with a signal: exit through Python's exit handlers rather than the default of dying on
    # the spot. (Nothing secret depends on it: TLS keys live in memory files, gone with the process however it ends.)
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
    widen_the_server_pool()
    runpy.run_module("pulumi.dynamic", run_name="__main__", alter_sys=True)
