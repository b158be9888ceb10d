"""Cross-tree scheduler vs one tree at a time: synthesis wall time on the same problems.

    python benchmarks/scheduler_speed.py [--problems 16] [--trees 8] [--model tiny] [--backend hf]
                                         [--repeats 3] [override ...]

Both runs use the same model, backend, problems and search settings; only
``search.concurrent_trees`` differs. Prints each run's wall time, engine calls and mean batch
size, and the ratio. Each arm runs ``--repeats`` times, alternating, and its median wall time
counts: a run of a few seconds on a shared CPU varies by 20% from one run to the next. The backend
is ``hf`` unless ``--backend`` says otherwise (the project default ``auto`` would pick vLLM where
installed; this benchmark measures the hf scheduler).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _compose import synthesis_metrics  # noqa: E402


def measure(overrides: list[str], trees: int) -> dict:
    return synthesis_metrics([*overrides, f"search.concurrent_trees={trees}"])


def median_run(runs: list[dict]) -> dict:
    """The run with the median wall time (its other figures are the same in every run)."""
    return sorted(runs, key=lambda m: m["bench_wall_seconds"])[len(runs) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--trees", type=int, default=8)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--search", default="tiny")
    parser.add_argument("--backend", default="hf", choices=["hf", "vllm", "auto"])
    parser.add_argument("--repeats", type=int, default=3, help="runs per arm; the median counts")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("override", nargs="*", help="extra Hydra overrides for both runs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    overrides = [*args.override, f"model={args.model}", f"search={args.search}", f"backend={args.backend}",
                 f"data.limit={args.problems}", "logger=none"]

    measure([*overrides, "data.limit=1"], 1)  # warm-up: model conversion, caches, first-call costs
    runs: dict[int, list[dict]] = {1: [], args.trees: []}
    for _ in range(args.repeats):  # alternate, so a burst of load hits both arms alike
        for trees in runs:
            runs[trees].append(measure(overrides, trees))
    baseline, batched = median_run(runs[1]), median_run(runs[args.trees])
    ratio = baseline["bench_wall_seconds"] / batched["bench_wall_seconds"]

    print(f"\nsynthesis of {args.problems} problems, model={args.model}, search={args.search}, "
          f"backend={args.backend}, median of {args.repeats} runs per arm")
    print(f"{'concurrent_trees':>18} {'wall s':>8} {'calls':>6} {'mean batch':>10} {'nodes':>6}")
    for trees, m in ((1, baseline), (args.trees, batched)):
        print(f"{trees:>18} {m['bench_wall_seconds']:>8.1f} {m['generation_calls']:>6} "
              f"{m['mean_batch_size']:>10.1f} {m['nodes_this_run']:>6}")
    print(f"speed-up (wall time, 1 tree / {args.trees} trees): {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"baseline": baseline, "batched": batched, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
