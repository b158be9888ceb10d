"""Per-step PRM labels from the node values of one chain (see docs/method.md#prm-labels)."""

from __future__ import annotations

from collections.abc import Sequence

LABEL_RULES = ("soft", "hard", "value_dynamics")


def prm_labels(
    values: Sequence[float],
    rule: str,
    threshold: float = 0.5,
    factor: float = 1.0,
    shape_step_one: bool = False,
) -> list[float]:
    """Labels of steps 1..K from the values of steps 0..K (step 0 is never labelled).

    - ``soft``: ``y_k = V_k``;
    - ``hard``: ``y_k = 1 if V_k > threshold else 0``;
    - ``value_dynamics``: ``y_1 = V_1`` and, for k >= 2, ``y_k = clip(V_k - factor * (V_{k-1} - V_k),
      0, 1)``: a step that lowers the value is penalised, one that raises it rewarded. Computed from
      the raw values, never from earlier labels (a recursion on labels makes them oscillate).
      Step 1 is left unshaped as the reference does: its predecessor is the root, whose value is
      never rolled out. ``shape_step_one=True`` shapes it against the root's value too.
    """
    if rule not in LABEL_RULES:
        raise ValueError(f"label rule '{rule}' must be one of {LABEL_RULES}")
    if len(values) < 2:
        raise ValueError(f"a chain needs step 0 and at least one labelled step, got {len(values)} values")
    for index, value in enumerate(values):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"value of step {index} is {value}, outside [0, 1]")
    if rule == "soft":
        return [float(v) for v in values[1:]]
    if rule == "hard":
        return [1.0 if v > threshold else 0.0 for v in values[1:]]
    shaped = [
        min(1.0, max(0.0, current - factor * (previous - current)))
        for previous, current in zip(values[:-1], values[1:], strict=True)
    ]
    if not shape_step_one:
        shaped[0] = float(values[1])
    return shaped


def penalty_targets(values: Sequence[float]) -> list[float]:
    """Targets of the dual-sided PRM's penalty head for steps 1..K from the values of steps 0..K:
    ``1[V_k < V_{k-1}]``, computed from the raw values (step 1 against the root's value V_0). A step
    that keeps the value (a piece of a split Finish completion copies its parent's) is no penalty."""
    if len(values) < 2:
        raise ValueError(f"a chain needs step 0 and at least one labelled step, got {len(values)} values")
    for index, value in enumerate(values):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"value of step {index} is {value}, outside [0, 1]")
    pairs = zip(values[:-1], values[1:], strict=True)
    return [1.0 if current < previous else 0.0 for previous, current in pairs]
