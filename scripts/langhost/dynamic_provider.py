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
    runpy.run_module("pulumi.dynamic", run_name="__main__", alter_sys=True)
