"""One way every benchmark prints its figures and records them, dated, in docs/benchmarks.md."""

from __future__ import annotations

import argparse
import datetime
import os
import platform

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def emit(title: str, rows: list[tuple[str, str]], record: bool) -> str:
    machine = f"{platform.node()}, {os.cpu_count()} CPUs, {platform.release()}"
    table = [f"### {title} — {datetime.date.today()} ({machine})", "", "| measure | value |", "| --- | --- |"]
    table += [f"| {k} | {v} |" for k, v in rows]
    text = "\n".join(table) + "\n"
    print(text)
    if record:
        with open(os.path.join(ROOT, "docs", "benchmarks.md"), "a") as f:
            f.write("\n" + text)
    return text


def traffic_arguments(repeats: str = "--failovers") -> argparse.Namespace:
    """The options of every benchmark that sends traffic and repeats a failover."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10, help="wrk duration per run")
    ap.add_argument("--connections", type=int, default=32, help="wrk keep-alive connections")
    ap.add_argument(repeats, type=int, default=10, help="failover runs (median and max are reported)")
    ap.add_argument("--record", action="store_true", help="append the table to docs/benchmarks.md")
    return ap.parse_args()
