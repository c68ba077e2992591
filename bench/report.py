"""One way every benchmark prints its figures and records them, dated, in docs/benchmarks.md."""

from __future__ import annotations

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
