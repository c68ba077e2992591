"""Program cost: `pulumi preview` and a no-op `pulumi up` for 1, 5, 20 lxc balancers x 3, 10, 50 targets, then
100 balancers x 50 targets to show how it grows, against the floor of an empty Pulumi program (same CLI, same language host, same backend) measured in the same run.

Targets are explicit addresses cycling over three demo API servers the bench starts (so haproxy's health checks
only reach the project's own instances); each balancer is one haproxy container, one config file and
its status reader.

Each balancer count is also measured as the same resource graph with providers that do nothing
(bench/graph_floor/): what Pulumi itself (CLI, engine, Python SDK, dynamic-provider plugin) costs for that many
components and dynamic resources. The real program's cost over that graph floor is incus-cplb's own.
Run: `python bench/program_cost.py [--record]` (part of `make bench`).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.report import emit  # noqa: E402
from tests.helpers import ProjectCopy, base_config, incus, instances_with_prefix, launch_external, unique_stack  # noqa: E402

BALANCERS = (1, 5, 20)
TARGETS = (3, 10, 50)
# One cell beyond the grid shows how the cost grows with the balancer count.
SCALE = (100, 50)


def cli(project: ProjectCopy, cwd: str, *args: str) -> float:
    env = {**os.environ, **project.env}
    t0 = time.monotonic()
    subprocess.run(["pulumi", *args, "--non-interactive", "--yes"] if args[0] in ("up", "destroy")
                   else ["pulumi", *args, "--non-interactive"], cwd=cwd, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.monotonic() - t0


def resources(project: ProjectCopy, stack: str) -> int:
    """The resources in the stack's state (components, instances, files, status readers)."""
    out = subprocess.run(["pulumi", "stack", "export", "--stack", stack], cwd=project.dir,
                         env={**os.environ, **project.env}, check=True, capture_output=True, text=True).stdout
    return sum(1 for r in json.loads(out)["deployment"].get("resources", [])
               if not r["type"].startswith("pulumi:"))


def median_of(n: int, fn) -> float:
    return statistics.median(fn() for _ in range(n))


def measure(project: ProjectCopy, cwd: str, stack: str, runs: int) -> tuple[float, float, float]:
    """Medians of a preview, a no-op `up`, and a no-op `up --skip-preview` (what `make up` and the watch loop run)."""
    return (median_of(runs, lambda: cli(project, cwd, "preview", "--stack", stack)),
            median_of(runs, lambda: cli(project, cwd, "up", "--stack", stack)),
            median_of(runs, lambda: cli(project, cwd, "up", "--skip-preview", "--stack", stack)))


def program_dir(project: ProjectCopy, name: str, files: dict[str, str]) -> str:
    """A Pulumi project beside the copy, run by the same CLI, language host and venv."""
    path = os.path.join(project.dir, name)
    os.makedirs(path)
    with open(os.path.join(path, "Pulumi.yaml"), "w") as f:
        f.write(f"name: cplb-{name}\nruntime:\n  name: python\n  options:\n    virtualenv: {ROOT}/.venv\n")
    for file, text in files.items():
        with open(os.path.join(path, file), "w") as f:
            f.write(text)
    return path


def graph_source() -> dict[str, str]:
    """bench/graph_floor/'s program: the graph of `lxc` balancers with providers that do nothing."""
    src = pathlib.Path(ROOT, "bench", "graph_floor")
    return {name: (src / name).read_text() for name in ("__main__.py", "noop.py")}


def config(n_balancers: int, n_targets: int, backends: list[str]) -> dict:
    targets = [{"name": f"t{k}", "address": backends[k % len(backends)]} for k in range(n_targets)]
    return base_config(loadBalancers=[{
        "name": f"b{i}", "cluster": "bench", "type": "lxc", "role": "service",
        "targets": {"addresses": targets},
        "healthCheck": {"intervalSeconds": 5},
        "lxc": {"instanceSpec": {"image": "cplb/haproxy", "limits": {"memory": "64MiB"}}},
    } for i in range(n_balancers)])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per measure (median)")
    parser.add_argument("--no-scale", action="store_true", help=f"skip the {SCALE[0]}-balancer cell")
    parser.add_argument("--cells", default="", help="only these cells, e.g. 20x50,100x50 (after the empty floor)")
    args = parser.parse_args()

    project = ProjectCopy()
    stack = unique_stack("pc")
    # The floor: an empty program in the same workspace setup.
    empty = program_dir(project, "empty", {"__main__.py": "# An empty Pulumi program: the floor every program pays.\n"})
    graph = program_dir(project, "graph", graph_source())
    backends = [f"{stack}-be-{n}" for n in (1, 2, 3)]
    rows: list[tuple[str, str]] = []
    try:
        cli(project, empty, "stack", "init", stack)
        cli(project, empty, "up")
        floor = measure(project, empty, stack, args.runs)
        rows.append(("empty program: preview / no-op up / no-op up --skip-preview (median)",
                     " / ".join(f"{t:.2f} s" for t in floor)))
        print(rows[-1])
        cli(project, graph, "stack", "init", stack)

        addresses = [launch_external(name, {"user.cplb.bench": stack}) for name in backends]
        project.write_stack_config(stack, config(1, 3, addresses))
        cli(project, project.dir, "stack", "init", stack)
        cells = [(nb, nt) for nb in BALANCERS for nt in TARGETS] + ([] if args.no_scale else [SCALE])
        if args.cells:
            cells = [tuple(int(n) for n in c.split("x")) for c in args.cells.split(",")]
        graph_floor: dict[int, tuple[float, float, float]] = {}
        for nb, nt in cells:
            if nb not in graph_floor:
                cli(project, graph, "config", "set", "--stack", stack, "graph:balancers", str(nb))
                cli(project, graph, "up", "--stack", stack)
                graph_floor[nb] = measure(project, graph, stack, args.runs)
                rows.append((f"graph floor: {nb} components x 3 do-nothing dynamic resources ({nb * 4} resources): "
                             "preview / no-op up / no-op up --skip-preview",
                             " / ".join(f"{t:.2f} s ({t / f:.1f}x)" for t, f in zip(graph_floor[nb], floor))))
                print(rows[-1], flush=True)
            project.write_stack_config(stack, config(nb, nt, addresses))
            converge = cli(project, project.dir, "up", "--stack", stack)
            cell = measure(project, project.dir, stack, args.runs)
            rows.append((f"{nb} balancers x {nt} targets ({resources(project, stack)} resources): preview / no-op up "
                         "/ no-op up --skip-preview",
                         " / ".join(f"{t:.2f} s ({t / f:.1f}x; {t / g:.1f}x the graph floor)"
                                    for t, f, g in zip(cell, floor, graph_floor[nb]))
                         + f"; converging up from the previous size {converge:.1f} s"))
            print(rows[-1], flush=True)
        cli(project, graph, "destroy", "--stack", stack)
        cli(project, project.dir, "destroy", "--stack", stack)
    finally:
        for name in list(instances_with_prefix(stack)):
            incus().delete_instance(name)
        project.cleanup()
    emit("Program cost (lxc balancers, explicit targets)", rows, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
