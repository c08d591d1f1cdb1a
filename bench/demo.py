"""`corral demo`'s margin: the default deep method against k-means on the digits, through the API.

    python -m bench.demo --out bench/results/demo-cpu.json

Runs the demo as a user does (its own `corral serve`) and records both rows and the load.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

from commands.demo import DEEP_BUDGET_S, run_demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--time", type=float, default=DEEP_BUDGET_S, help="the deep job's budget, seconds")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    baseline, deep = run_demo(server=None, budget_s=args.time)
    report = {"time_budget_s": args.time, "load_before": load_before, "load_after": os.getloadavg()[0],
              "acc_margin": (deep.metrics or {}).get("acc", 0.0) - (baseline.metrics or {}).get("acc", 0.0),
              "rows": [dataclasses.asdict(row) for row in (baseline, deep)]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps({key: value for key, value in report.items() if key != "rows"}))


if __name__ == "__main__":
    main()
