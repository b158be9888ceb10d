"""The steps of self-evolution rounds, as the existing stages with their Hydra overrides.

Round k runs, each in ``rounds/<k>/<step>/``:

    curriculum (optional) -> synthesize -> sft -> dpo (optional) -> prm -> evaluate (optional)
    -> evaluate_before (optional)

- curriculum and synthesize use round k's *searching* policy: the configured model in round 1,
  round k-1's trained policy after that; synthesize reads the curriculum's ``seeds.jsonl``.
- sft and prm train the configured base model on round k's trees (on the trees of rounds 1..k
  with ``accumulate``); dpo trains the SFT policy (its merged folder: with LoRA, the adapter
  disabled is exactly that policy, DPO's reference).
- evaluate scores round k's trained policy with round k's PRM; evaluate_before scores the policy
  that searched round k with the same PRM (with the same overrides as evaluate), so a round's gain
  is measured under one PRM.

A trained policy reaches the next steps either as its merged folder (``model.source=``) or as a
LoRA adapter on its base (``model.adapter=``, served unmerged by vLLM): ``handoff``.

Everything here is plain: paths in, override strings out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

STEPS = ("curriculum", "synthesize", "sft", "dpo", "prm", "evaluate", "evaluate_before")
# Steps that run another step's stage (and take its overrides).
STAGE_OF = {"evaluate_before": "evaluate"}
HANDOFFS = ("merged", "adapter")


@dataclass(frozen=True)
class EvolveSettings:
    rounds: int = 2
    curriculum: bool = False
    dpo: bool = False
    evaluate: bool = True
    evaluate_before: bool = False
    accumulate: bool = False
    handoff: str = "merged"  # merged | adapter (``auto`` is resolved by the stage)
    overrides: dict[str, list[str]] = field(default_factory=dict)  # "all" and one list per step

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"stage.rounds must be at least 1, not {self.rounds}")
        if self.handoff not in HANDOFFS:
            raise ValueError(f"stage.handoff must be one of {HANDOFFS} (or auto), not {self.handoff!r}")
        allowed = ["all", *(s for s in STEPS if s not in STAGE_OF)]
        unknown = sorted(set(self.overrides) - set(allowed))
        if unknown:
            raise ValueError(f"stage.overrides has no step {unknown}; steps: {', '.join(allowed)}")

    def steps(self) -> tuple[str, ...]:
        enabled = {"curriculum": self.curriculum, "dpo": self.dpo, "evaluate": self.evaluate,
                   "evaluate_before": self.evaluate_before}
        return tuple(s for s in STEPS if enabled.get(s, True))


@dataclass(frozen=True)
class Policy:
    """A trained policy: its merged folder, or its adapter on a base folder."""

    merged: str
    adapter: str
    adapter_base: str | None  # None: the configured base model
    round: int


@dataclass(frozen=True)
class StepPlan:
    name: str
    round: int
    directory: str  # rounds/<k>/<name>
    overrides: list[str]
    inputs: dict[str, str]


def quoted(value: str) -> str:
    """A value as a quoted Hydra override string (paths may hold characters the grammar reserves)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def step_dir(run_dir: Path, round_: int, name: str) -> Path:
    return run_dir / "rounds" / str(round_) / name


def policy_overrides(policy: Policy | None, handoff: str, base_id: str) -> list[str]:
    """How a step loads ``policy`` (nothing for the configured model)."""
    if policy is None:
        return []
    name = [f"model.id={quoted(f'{base_id}+evolve-r{policy.round}')}"]
    if handoff == "merged":
        return [f"model.source={quoted(policy.merged)}", *name]
    base = [f"model.source={quoted(policy.adapter_base)}"] if policy.adapter_base else []
    return [*base, f"++model.adapter={quoted(policy.adapter)}", *name]


def round_plan(settings: EvolveSettings, run_dir: Path, round_: int, searching: Policy | None,
               base_id: str) -> tuple[list[StepPlan], Policy]:
    """Round ``round_``'s steps, and the policy it trains (which searches in the next round)."""
    extra = settings.overrides
    common = list(extra.get("all", []))
    here = {name: step_dir(run_dir, round_, name).resolve() for name in STEPS}
    plans: list[StepPlan] = []

    def add(name: str, overrides: list[str], inputs: dict[str, str]) -> None:
        stage = STAGE_OF.get(name, name)
        plans.append(StepPlan(name, round_, f"rounds/{round_}/{name}",
                              [f"stage={stage}", *common, *overrides, *extra.get(stage, [])], inputs))

    searching_model = policy_overrides(searching, settings.handoff, base_id)
    policy_input = {"policy": searching.merged if settings.handoff == "merged" else searching.adapter} \
        if searching else {}
    steps = settings.steps()
    seeds: list[str] = []
    if "curriculum" in steps:
        add("curriculum", searching_model, dict(policy_input))
        seeds = ["data=jsonl", f"data.path={quoted(str(here['curriculum'] / 'seeds.jsonl'))}"]
    add("synthesize", [*searching_model, *seeds],
        {**policy_input, **({"seeds": str(here["curriculum"] / "seeds.jsonl")} if seeds else {})})

    rounds_read = range(1, round_ + 1) if settings.accumulate else range(round_, round_ + 1)
    trees = [str(step_dir(run_dir, r, "synthesize").resolve()) for r in rounds_read]
    trees_override = "data.trees=[" + ",".join(quoted(t) for t in trees) + "]"
    resume = "stage.ckpt_path=latest"  # a step killed mid-training resumes from its checkpoint
    add("sft", [trees_override, resume], {"trees": ", ".join(trees)})
    sft_final = here["sft"] / "final"
    trained = Policy(merged=str(sft_final / "merged"), adapter=str(sft_final), adapter_base=None,
                     round=round_)
    if "dpo" in steps:
        add("dpo", [f"model.source={quoted(trained.merged)}", trees_override, resume],
            {"trees": ", ".join(trees), "policy": trained.merged})
        dpo_final = here["dpo"] / "final"
        trained = Policy(merged=str(dpo_final / "merged"), adapter=str(dpo_final),
                         adapter_base=str(sft_final / "merged"), round=round_)
    add("prm", [trees_override, resume], {"trees": ", ".join(trees)})
    prm = str(here["prm"] / "final")
    if "evaluate" in steps:
        evaluated = policy_overrides(trained, settings.handoff, base_id)
        add("evaluate", [*evaluated, f"stage.prm.path={quoted(prm)}"],
            {"policy": trained.merged if settings.handoff == "merged" else trained.adapter, "prm": prm})
    if "evaluate_before" in steps:
        add("evaluate_before", [*searching_model, f"stage.prm.path={quoted(prm)}"],
            {**policy_input, "prm": prm})
    return plans, trained
