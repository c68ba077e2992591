"""The dynamic-provider plugin's launcher (scripts/langhost/dynamic_provider.py)."""

import importlib.util
import os
import threading
from concurrent import futures

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _launcher():
    spec = importlib.util.spec_from_file_location(
        "cplb_dynamic_provider", os.path.join(ROOT, "scripts", "langhost", "dynamic_provider.py"))
    module = importlib.util.module_from_spec(spec)
    import sys

    sys.path.insert(0, os.path.join(ROOT, "scripts", "langhost"))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(os.path.join(ROOT, "scripts", "langhost"))
    return module


def test_more_calls_than_pulumis_four_threads_wait_at_once_without_starving_the_one_they_wait_for(monkeypatch):
    """pulumi.dynamic serves the engine from ThreadPoolExecutor(max_workers=4): four rollout waits held every thread,
    and the call they waited for never ran. With the launcher's pool, eight waiting calls and the ninth that releases
    them all run."""
    launcher = _launcher()
    monkeypatch.setattr(futures, "ThreadPoolExecutor", futures.ThreadPoolExecutor)
    launcher.widen_the_server_pool()
    released = threading.Event()
    pool = futures.ThreadPoolExecutor(max_workers=4)  # what pulumi.dynamic asks for
    try:
        waiting = [pool.submit(released.wait, 10) for _ in range(8)]
        pool.submit(released.set).result(timeout=10)
        assert all(w.result(timeout=10) for w in waiting)
    finally:
        released.set()
        pool.shutdown(wait=True)
