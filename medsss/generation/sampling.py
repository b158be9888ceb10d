"""Next-token sampling for the transformers backend: temperature, exact top-p, seeded.

Top-p uses rejection sampling instead of sorting the vocabulary: draw a token from the (possibly
already truncated) distribution; it belongs to the nucleus iff the tokens strictly more probable
than it hold less than ``top_p`` of the mass; otherwise every token at most as probable as it is
outside the nucleus too, so raise the floor to its probability and draw again. Accepted draws
follow exactly the renormalised nucleus distribution, and each round is a few vectorised passes
over the vocabulary rather than a sort (the idea behind FlashInfer's sorting-free samplers).
"""

from __future__ import annotations

import torch


def sample_next_tokens(
    logits: torch.Tensor,
    temperature: float,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    max_rounds: int = 64,
) -> torch.Tensor:
    """One token per row of ``logits`` (batch x vocab); ``temperature <= 0`` is greedy."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1.0:
        return _draw(probs, generator)

    floor = torch.zeros(probs.shape[0], 1, dtype=probs.dtype, device=probs.device)
    chosen = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
    pending = torch.arange(probs.shape[0], device=probs.device)
    for _ in range(max_rounds):
        rows = probs[pending]
        allowed = torch.where(rows > floor[pending], rows, torch.zeros_like(rows))
        draw = _draw(allowed, generator)
        pivot = rows.gather(1, draw[:, None])
        mass_above = torch.where(rows > pivot, rows, torch.zeros_like(rows)).sum(dim=1)
        accept = mass_above < top_p
        chosen[pending[accept]] = draw[accept]
        floor[pending[~accept]] = pivot[~accept]
        pending = pending[~accept]
        if pending.numel() == 0:
            return chosen
    # Pathological ties can stall the floor; the most probable token is always in the nucleus.
    chosen[pending] = probs[pending].argmax(dim=-1)
    return chosen


def _draw(weights: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Sample an index per row with probability proportional to ``weights`` (inverse CDF).

    One cumulative sum and one uniform number per row: far cheaper than a sort or per-element
    random noise over a 50k-token vocabulary.
    """
    cdf = weights.cumsum(dim=-1)
    threshold = torch.rand(weights.shape[0], 1, generator=generator, device=weights.device,
                           dtype=cdf.dtype) * cdf[:, -1:]
    index = torch.searchsorted(cdf, threshold, right=True).squeeze(1)
    # Guard the float edge (threshold == total) and never land on a zero-weight token.
    index = index.clamp(max=weights.shape[1] - 1)
    bad = weights.gather(1, index[:, None]).squeeze(1) <= 0
    if bad.any():
        index[bad] = weights[bad].argmax(dim=-1)
    return index
