"""Synthesis speed on a serving engine, measured in one run on the same problems and settings.

    python benchmarks/vllm_synthesis.py [--model tiny] [--problems 16]
    python benchmarks/vllm_synthesis.py --paper --model smollm2_135m --problems 4

Default mode runs, on the same model, problems and search settings:
  hf with 1 tree at a time, vllm with 1 tree at a time, vllm with 16 trees in lockstep ticks
  (one generate call per tick) and vllm with 16 trees streamed (continuous batching);
and prints wall times, the ratios, and vLLM's prefix-cache hit rate (cached / prompt tokens).
``--paper`` instead runs ``search=mcts`` (paper constants) with vLLM and prints problems per hour
and generated tokens per correct trajectory.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _compose import synthesis_metrics as measure  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--search", default=None, help="default: tiny for model=tiny, cpu otherwise")
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--trees", type=int, default=16)
    parser.add_argument("--paper", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    search = args.search or ("tiny" if args.model == "tiny" else "cpu")
    base = [f"model={args.model}", f"data.limit={args.problems}", "logger=none"]

    if args.paper:
        m = measure([*base, "search=mcts", "backend=vllm", f"search.concurrent_trees={args.trees}"])
        correct = max(m["trajectories_pos_chains"], 1)
        print(f"\nsearch=mcts (paper settings), backend=vllm, model={args.model}, {args.problems} problems, "
              f"{args.trees} trees")
        print(f"  wall {m['bench_wall_seconds']:.1f} s, {m['problems_per_hour']:.1f} problems/hour, "
              f"{m['nodes_this_run']} nodes, {m['trajectories_pos_chains']} correct / "
              f"{m['trajectories_neg_chains']} incorrect chains")
        print(f"  generated tokens per correct trajectory: {m['generated_tokens'] / correct:.0f}; "
              f"prefix-cache hit rate {m['prefix_cache_hit_rate']:.1%}")
        return

    many = f"search.concurrent_trees={args.trees}"
    runs = {
        "hf, 1 tree": measure([*base, f"search={search}", "backend=hf", "search.concurrent_trees=1"]),
        "vllm, 1 tree": measure([*base, f"search={search}", "backend=vllm", "search.concurrent_trees=1"]),
        f"vllm, {args.trees} ticked": measure([*base, f"search={search}", "backend=vllm", many,
                                               "backend.streaming=false"]),
        f"vllm, {args.trees} trees": measure([*base, f"search={search}", "backend=vllm", many]),
    }
    print(f"\nsynthesis of {args.problems} problems, model={args.model}, search={search}")
    print("(search s: the synthesis itself; wall s adds model loading and, for vLLM, engine start-up;\n"
          " a streamed run counts engine steps as calls and sequences in flight as its batch)")
    print(f"{'run':>16} {'search s':>9} {'wall s':>8} {'calls':>6} {'mean batch':>10} {'nodes':>6} "
          f"{'gen tokens':>10} {'tok/s':>6} {'cache hit':>9}")
    for name, m in runs.items():
        print(f"{name:>16} {m['search_seconds']:>9.1f} {m['bench_wall_seconds']:>8.1f} "
              f"{m['generation_calls']:>6} {m['mean_batch_size']:>10.1f} {m['nodes_this_run']:>6} "
              f"{m['generated_tokens']:>10} "
              f"{m['generated_tokens'] / m['search_seconds']:>6.0f} {m['prefix_cache_hit_rate']:>9.1%}")
    hf1, v1, ticked, vn = runs.values()

    def ratios(key: str, label: str) -> None:
        print(f"{label}: vllm {args.trees} trees vs hf 1 tree {hf1[key] / vn[key]:.2f}x; "
              f"vllm {args.trees} vs 1 tree {v1[key] / vn[key]:.2f}x; "
              f"vllm vs hf at 1 tree {hf1[key] / v1[key]:.2f}x; "
              f"vllm {args.trees} streamed vs ticked {ticked[key] / vn[key]:.2f}x")

    ratios("search_seconds", "search time")
    ratios("bench_wall_seconds", "wall time")
    # The engines sample differently, so the trees (and their sizes) differ: normalise as well.
    for m in runs.values():
        m["seconds_per_node"] = m["search_seconds"] / max(m["nodes_this_run"], 1)
        m["seconds_per_token"] = m["search_seconds"] / max(m["generated_tokens"], 1)
    ratios("seconds_per_node", "search time per node")
    ratios("seconds_per_token", "search time per generated token")
    print(f"prefix-cache hit rate with {args.trees} trees: {vn['prefix_cache_hit_rate']:.1%}")

if __name__ == "__main__":
    main()
