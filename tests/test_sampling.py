"""Sort-free top-p sampling draws exactly from the renormalised nucleus."""

import torch

from medsss.generation.sampling import sample_next_tokens


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """The reference: sort, keep tokens whose preceding mass is below top_p, renormalise."""
    sorted_probs, order = probs.sort(descending=True)
    keep = (sorted_probs.cumsum(0) - sorted_probs) < top_p
    out = torch.zeros_like(probs)
    out[order[keep]] = sorted_probs[keep]
    return out / out.sum()


def test_empirical_distribution_matches_the_nucleus():
    logits = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -1.0])
    expected = nucleus(torch.softmax(logits, 0), 0.8)  # keeps the top three tokens
    draws = sample_next_tokens(logits.expand(100_000, 6).contiguous(), 1.0, 0.8,
                               torch.Generator().manual_seed(0))
    observed = torch.bincount(draws, minlength=6).float() / draws.numel()
    assert torch.equal(observed[3:], torch.zeros(3))
    assert torch.allclose(observed, expected, atol=0.006)


def test_temperature_sharpens_before_the_nucleus_is_taken():
    logits = torch.tensor([1.0, 0.0, -1.0])
    expected = nucleus(torch.softmax(logits / 0.5, 0), 0.95)
    draws = sample_next_tokens(logits.expand(50_000, 3).contiguous(), 0.5, 0.95, torch.Generator().manual_seed(1))
    observed = torch.bincount(draws, minlength=3).float() / draws.numel()
    assert torch.allclose(observed, expected, atol=0.008)


def test_zero_temperature_is_greedy_and_top_p_one_keeps_every_token():
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 0.0, 0.0]])
    assert sample_next_tokens(logits, 0.0).tolist() == [1, 0]
    flat = torch.zeros(30_000, 4)
    draws = sample_next_tokens(flat, 1.0, 1.0, torch.Generator().manual_seed(2))
    assert set(draws.tolist()) == {0, 1, 2, 3}


def test_the_same_generator_seed_gives_the_same_draws():
    logits = torch.randn(8, 50)
    first = sample_next_tokens(logits, 1.0, 0.9, torch.Generator().manual_seed(3))
    second = sample_next_tokens(logits, 1.0, 0.9, torch.Generator().manual_seed(3))
    assert torch.equal(first, second)
