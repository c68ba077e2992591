"""The dynamic-provider plugin: `python -m pulumi.dynamic <engine>`, ended with the CLI that started it."""

import os
import runpy
import sys

from orphan_guard import exit_with_parent  # this script's directory is sys.path[0]

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
    runpy.run_module("pulumi.dynamic", run_name="__main__", alter_sys=True)
