import math

import pytest
import torch

from kgen.engine.sampling import (
    Candidates,
    MinP,
    RepetitionPenalty,
    SamplerChain,
    SamplingContext,
    Temperature,
    TopK,
    TopP,
    build_chain,
    draw,
    greedy,
    make_generator,
)
from kgen.generation import SamplingSettings

NONE = SamplingContext()


def logits_of(probs: list[float]) -> torch.Tensor:
    return torch.tensor([[math.log(p) for p in probs]])


def kept(candidates: Candidates) -> set[int]:
    alive = torch.isfinite(candidates.logits[0])
    return set(candidates.ids()[0][alive].tolist())


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits():
    logits = torch.tensor([[2.0, -2.0, 2.0, -2.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = RepetitionPenalty(2.0)(Candidates(logits), SamplingContext(seen=seen)).logits
    assert out.tolist() == [[1.0, -4.0, 2.0, -2.0]]


def test_repetition_penalty_follows_candidate_ids_after_narrowing():
    cands = Candidates(torch.tensor([[3.0, 1.0]]), token_ids=torch.tensor([[2, 0]]), descending=True)
    seen = torch.tensor([[False, False, True]])
    out = RepetitionPenalty(1.5)(cands, SamplingContext(seen=seen))
    assert out.logits.tolist() == [[2.0, 1.0]]


def test_temperature_scales_logits():
    out = Temperature(0.5)(Candidates(torch.tensor([[1.0, -3.0]])), NONE)
    assert out.logits.tolist() == [[2.0, -6.0]]


def test_top_k_keeps_the_k_best_sorted():
    out = TopK(2)(Candidates(torch.tensor([[0.1, 3.0, -1.0, 2.0]])), NONE)
    assert out.ids().tolist() == [[1, 3]]
    assert out.descending


def test_top_k_zero_keeps_everything():
    cands = Candidates(torch.tensor([[0.1, 3.0]]))
    assert TopK(0)(cands, NONE) is cands


@pytest.mark.parametrize(
    ("p", "expected"), [(0.5, {0}), (0.8, {0, 1}), (0.81, {0, 1, 2}), (1.0, {0, 1, 2, 3})]
)
def test_top_p_keeps_smallest_set_reaching_p(p, expected):
    out = TopP(p)(Candidates(logits_of([0.5, 0.3, 0.15, 0.05])), NONE)
    assert kept(out) == expected


def test_top_p_always_keeps_the_best_token():
    out = TopP(0.0)(Candidates(logits_of([0.2, 0.7, 0.1])), NONE)
    assert kept(out) == {1}


@pytest.mark.parametrize(("p", "expected"), [(0.5, {0, 1}), (0.2, {0, 1, 2}), (1.0, {0})])
def test_min_p_drops_tokens_below_fraction_of_best(p, expected):
    out = MinP(p)(Candidates(logits_of([0.5, 0.3, 0.15, 0.05])), NONE)
    assert kept(out) == expected


def test_greedy_picks_best_token_id():
    cands = Candidates(torch.tensor([[0.0, 5.0], [9.0, 1.0]]), token_ids=torch.tensor([[7, 3], [4, 8]]))
    assert greedy(cands, []).tolist() == [3, 4]


def test_draw_never_picks_excluded_tokens():
    logits = torch.tensor([[0.0, float("-inf"), 0.0, float("-inf")]])
    gen = make_generator(0)
    picks = {draw(Candidates(logits), [gen]).item() for _ in range(200)}
    assert picks == {0, 2}


def test_draw_follows_the_distribution():
    probs = [0.6, 0.3, 0.1]
    gen = make_generator(123)
    counts = torch.zeros(3)
    for _ in range(3000):
        counts[draw(Candidates(logits_of(probs)), [gen]).item()] += 1
    assert torch.allclose(counts / 3000, torch.tensor(probs), atol=0.04)


def test_each_row_uses_only_its_own_generator():
    logits = torch.randn(3, 50, generator=make_generator(5))
    alone = [draw(Candidates(logits[i : i + 1]), [make_generator(10 + i)]).item() for i in range(3)]
    together = draw(Candidates(logits), [make_generator(10 + i) for i in range(3)]).tolist()
    assert alone == together


def test_same_seed_same_tokens_and_global_rng_untouched():
    chain = build_chain(SamplingSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0))
    logits = torch.zeros(1, 1000)
    state = torch.random.get_rng_state()
    fresh = [chain(logits, [g]).item() for g in [make_generator(7) for _ in range(20)]]
    assert len(set(fresh)) == 1  # twenty generators of one seed draw the same token
    sequences = []
    for _ in range(2):
        gen = make_generator(7)
        sequences.append([chain(logits, [gen]).item() for _ in range(20)])
    assert sequences[0] == sequences[1]  # and one generator of that seed the same sequence
    assert sequences[0][0] == fresh[0]
    assert len(set(sequences[0])) > 5  # a generator advances
    assert torch.equal(state, torch.random.get_rng_state())


def test_build_chain_order_and_greedy_at_zero_temperature():
    chain = build_chain(
        SamplingSettings(temperature=0.7, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.2)
    )
    assert [type(s) for s in chain.steps] == [RepetitionPenalty, TopK, Temperature, TopP, MinP]
    assert chain.select is draw
    assert chain.uses_history
    greedy_chain = build_chain(SamplingSettings(temperature=0, repetition_penalty=1.0))
    assert greedy_chain.steps == () and greedy_chain.select is greedy
    assert not greedy_chain.uses_history


def test_chain_applies_penalty_before_greedy():
    chain = build_chain(SamplingSettings(temperature=0, repetition_penalty=4.0))
    logits = torch.tensor([[4.0, 3.0]])
    seen = torch.tensor([[True, False]])
    assert chain(logits, [make_generator(0)], seen).tolist() == [1]
    assert chain(logits, [make_generator(0)]).tolist() == [0]


def test_chain_rejects_generator_count_mismatch():
    chain = SamplerChain((), greedy)
    with pytest.raises(ValueError, match="generators"):
        chain(torch.zeros(2, 4), [make_generator(0)])


def test_make_generator_accepts_any_int():
    for seed in (-1, 0, 2**70 + 3):
        a, b = make_generator(seed), make_generator(seed)
        assert torch.equal(torch.rand(3, generator=a), torch.rand(3, generator=b))


def _history_of(seen: torch.Tensor, width: int) -> torch.Tensor:
    """Each row's seen ids, padded to ``width`` with repeats of its first id (as the backend keeps them)."""
    rows = []
    for row in seen:
        ids = row.nonzero().flatten().tolist()
        rows.append(ids + [ids[0]] * (width - len(ids)))
    return torch.tensor(rows)


@pytest.mark.parametrize("narrowed", [False, True])
def test_repetition_penalty_from_history_equals_from_seen_mask(narrowed):
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 50, generator=generator) * 3
    seen = torch.rand(3, 50, generator=generator) < 0.3
    seen[:, 0] = True
    history = _history_of(seen, 40)
    candidates = Candidates(logits)
    if narrowed:
        candidates = TopK(10)(candidates, NONE)
    penalty = RepetitionPenalty(1.7)
    by_mask = penalty(candidates, SamplingContext(seen=seen))
    by_history = penalty(candidates, SamplingContext(history=history))
    assert torch.equal(by_mask.logits, by_history.logits)
    assert torch.equal(by_mask.ids(), by_history.ids())
    assert not torch.equal(by_mask.logits, candidates.logits)


def test_chain_with_history_draws_what_the_seen_mask_draws():
    chain = build_chain(
        SamplingSettings(temperature=0.8, top_k=20, top_p=0.9, min_p=0.02, repetition_penalty=1.3)
    )
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(4, 300, generator=generator) * 4
    seen = torch.rand(4, 300, generator=generator) < 0.2
    seen[:, 0] = True
    history = _history_of(seen, 120)
    for seed in range(30):
        by_mask = chain(logits, [make_generator(seed + r) for r in range(4)], seen)
        by_history = chain(logits, [make_generator(seed + r) for r in range(4)], history=history)
        assert torch.equal(by_mask, by_history)


@pytest.mark.parametrize("temperature", [0.3, 0.7, 1.6])
def test_top_k_after_temperature_keeps_transformers_distribution(temperature):
    """Temperature after top-k (our order) gives the same allowed set and probabilities as before it."""
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 200, generator=generator) * 3
    ours = Temperature(temperature)(TopK(25)(Candidates(logits), NONE), NONE)
    theirs = TopK(25)(Temperature(temperature)(Candidates(logits), NONE), NONE)
    assert torch.equal(ours.ids(), theirs.ids())
    torch.testing.assert_close(torch.softmax(ours.logits, -1), torch.softmax(theirs.logits, -1))
