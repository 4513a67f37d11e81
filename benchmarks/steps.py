"""How the program scales with the number of nodes, under Pulumi's mocks (no node is contacted).

Prints, for 3, 20 and 100 nodes: the time to evaluate __main__.py, the remote steps per node, the total
number of resources, and the dependency depth (the longest chain of remote steps, which is what a real
`pulumi up` waits for when nodes are provisioned in parallel). Usage: .venv/bin/python benchmarks/steps.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pgbackup_testkit.harness import Run, depth, node_config, run_program, stack_config


def main() -> None:
    print(f"{'nodes':>5} {'eval s (median of 3)':>21} {'resources':>9} {'remote steps':>12} "
          f"{'steps/node':>10} {'depth':>5}")
    for count in (3, 20, 100):
        cluster = {"stanza": "main", "nodes": [node_config(f"pg{i}") for i in range(1, count + 1)]}
        times, run = [], Run()
        for _ in range(3):
            start = time.perf_counter()
            run = run_program(stack_config(cluster=cluster))
            times.append(time.perf_counter() - start)
        steps = len(run.commands)
        print(f"{count:>5} {statistics.median(times):>21.2f} {len(run.resources):>9} {steps:>12} "
              f"{steps / count:>10.1f} {depth(run):>5}")


if __name__ == "__main__":
    main()
