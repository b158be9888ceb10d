"""Sort-free top-p sampling draws exactly from the renormalised nucleus."""

import torch

from medsss.generation.sampling import RowStreams, sample_next_tokens


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


# -- counter-based per-row streams -------------------------------------------------------------


def test_row_streams_give_the_nucleus_distribution_too():
    logits = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -1.0])
    expected = nucleus(torch.softmax(logits, 0), 0.8)
    rows = 100_000
    streams = RowStreams(seeds=list(range(rows)), samples=[0] * rows)
    draws = sample_next_tokens(logits.expand(rows, 6).contiguous(), 1.0, 0.8, streams=streams, step=4)
    observed = torch.bincount(draws, minlength=6).float() / rows
    assert torch.equal(observed[3:], torch.zeros(3))
    assert torch.allclose(observed, expected, atol=0.006)


def test_row_stream_uniforms_are_uniform_in_the_unit_interval():
    numbers = RowStreams(seeds=[7] * 100_000, samples=list(range(100_000))).uniforms(step=0, round_=0)
    assert numbers.dtype == torch.float32 and 0.0 <= numbers.min() and numbers.max() < 1.0
    deciles = torch.bincount((numbers * 10).long(), minlength=10).float() / numbers.numel()
    assert torch.allclose(deciles, torch.full((10,), 0.1), atol=0.005)


def test_a_rows_numbers_depend_only_on_its_seed_sample_step_and_round():
    batch = RowStreams(seeds=[5, 7, 9], samples=[0, 1, 2])
    alone = RowStreams(seeds=[7], samples=[1])
    assert batch.uniforms(3, 0)[1] == alone.uniforms(3, 0)[0]
    assert batch.uniforms(3, 2, rows=torch.tensor([1]))[0] == alone.uniforms(3, 2)[0]
    assert batch.select(torch.tensor([2, 1])).uniforms(3, 0).tolist() == batch.uniforms(3, 0)[[2, 1]].tolist()
    # Each coordinate moves the number: the sample index, the step, the round and the seed.
    distinct = {float(RowStreams([s], [i]).uniforms(t, r)[0])
                for s, i, t, r in [(7, 1, 3, 0), (7, 0, 3, 0), (7, 1, 4, 0), (7, 1, 3, 1), (8, 1, 3, 0)]}
    assert len(distinct) == 5


def test_sampled_tokens_of_a_row_do_not_depend_on_the_other_rows():
    torch.manual_seed(0)
    logits = torch.randn(6, 40) * 3
    streams = RowStreams(seeds=[11, 11, 11, 3, 4, 5], samples=[0, 1, 2, 0, 0, 0])
    together = sample_next_tokens(logits, 0.9, 0.7, streams=streams, step=2)
    for row in range(6):
        only = torch.tensor([row])
        alone = sample_next_tokens(logits[only], 0.9, 0.7, streams=streams.select(only), step=2)
        assert alone.item() == together[row].item()


def test_per_row_settings_sample_each_row_as_it_would_alone():
    torch.manual_seed(1)
    logits = torch.randn(4, 30) * 2
    temperature = torch.tensor([0.0, 1.0, 0.6, 1.0])
    top_p = torch.tensor([1.0, 0.9, 0.8, 1.0])
    streams = RowStreams(seeds=[1, 2, 3, 4], samples=[0, 0, 0, 0])
    together = sample_next_tokens(logits, temperature, top_p, streams=streams, step=5)
    assert together[0].item() == logits[0].argmax().item()  # temperature 0: greedy
    for row in range(1, 4):
        only = torch.tensor([row])
        alone = sample_next_tokens(logits[only], float(temperature[row]), float(top_p[row]),
                                   streams=streams.select(only), step=5)
        assert alone.item() == together[row].item()


def test_per_row_top_p_keeps_each_rows_own_nucleus():
    logits = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -1.0])
    rows = 60_000
    top_p = torch.tensor([0.5, 0.8]).repeat(rows // 2)  # alternating rows
    draws = sample_next_tokens(logits.expand(rows, 6).contiguous(), 1.0, top_p,
                               streams=RowStreams(list(range(rows)), [0] * rows))
    probs = torch.softmax(logits, 0)
    for parity, p in ((0, 0.5), (1, 0.8)):
        observed = torch.bincount(draws[parity::2], minlength=6).float() / (rows // 2)
        assert torch.allclose(observed, nucleus(probs, p), atol=0.008)
