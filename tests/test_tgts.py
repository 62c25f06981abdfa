"""TGTS correctness: children follow the model's distribution, completions are samplable, caches agree."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kgen.engine.tgts import (
    POLICIES,
    CachePoolFull,
    SeparatorSplitter,
    TextSplitter,
    tree_sample,
)
from kgen.engine.tgts.distribution import allowed_probabilities
from kgen.engine.tgts.tree import NodeEvent, TreeEngine, group_score
from kgen.generation import SamplingSettings

# ---- a bigram LLaMA: logits depend only on the last token, through a transition table we choose -----------
PAD, BOS, EOS, COMMA = 0, 1, 2, 3
FIRST = [4, 5, 6, 7]  # a group is FIRST [SECOND] COMMA
SECOND = [8, 9, 10]
VOCAB = 12
NEG = -200.0  # exp underflows to exactly 0 in float32: impossible


def transition_logits() -> torch.Tensor:
    """Row t: logits of the next token after token t."""
    table = torch.full((VOCAB, VOCAB), NEG)
    table[BOS, FIRST] = torch.tensor([1.0, 0.5, 0.0, -0.5])
    table[COMMA, FIRST] = torch.tensor([0.2, 0.9, -0.3, 0.4])
    table[COMMA, EOS] = -1.0
    for i, token in enumerate(FIRST):
        table[token, SECOND] = torch.tensor([0.3, -0.2, 0.1]) + 0.1 * i
        table[token, COMMA] = 0.6 - 0.3 * i
    for token in SECOND:
        table[token, COMMA] = 2.0
        table[token, EOS] = -2.5
    table[EOS, EOS] = 0.0
    table[PAD, PAD] = 0.0
    return table


def bigram_model() -> LlamaForCausalLM:
    """One LLaMA layer whose attention and MLP add nothing: the residual is the last token's embedding."""
    hidden = 16
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=False,
        rms_norm_eps=1e-12,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    with torch.no_grad():
        layer = model.model.layers[0]
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, :VOCAB] = torch.eye(VOCAB)  # one-hot; RMSNorm scales by sqrt(16)
        model.model.norm.weight.fill_(1 / math.sqrt(hidden))
        model.lm_head.weight.zero_()
        model.lm_head.weight[:, :VOCAB] = transition_logits().T
    return model.eval()


def random_llama(seed: int = 0, vocab: int = 64) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.eval()


COMMA_SPLIT = SeparatorSplitter(frozenset({COMMA}), 1)


def expected_group_distribution(
    prefix: list[int], settings: SamplingSettings
) -> dict[tuple[int, ...], float]:
    """Exact probability of each next group after ``prefix`` under ``settings`` (enumerating the bigram)."""
    table = transition_logits()
    result: dict[tuple[int, ...], float] = {}

    def visit(sequence: list[int], group: tuple[int, ...], mass: float) -> None:
        seen = torch.zeros((1, VOCAB), dtype=torch.bool)
        seen[0, sequence] = True
        probs = allowed_probabilities(table[sequence[-1]][None], seen, settings)[0]
        for token in torch.nonzero(probs).reshape(-1).tolist():
            p = mass * float(probs[token])
            extended = (*group, token)
            if token in (COMMA, EOS):
                result[extended] = result.get(extended, 0.0) + p
            else:
                visit([*sequence, token], extended, p)

    visit(prefix, (), 1.0)
    return result


def chi_square_critical(dof: int, z: float = 3.09) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile; z = 3.09 is the 0.999 quantile."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


def sample_groups(prefix: list[int], settings: SamplingSettings, draws: int, seed: int) -> Counter:
    """Launch ``draws`` one-group growths from the node holding ``prefix`` and count the groups produced."""
    engine = TreeEngine(bigram_model(), settings, COMMA_SPLIT, [EOS], seed, max_cache_tokens=100_000)
    node = engine.start(prefix)
    for _ in range(draws):
        engine.launch(node, rollout=False)
    counts: Counter = Counter()
    while engine.active:
        for event in engine.step():
            if isinstance(event, NodeEvent):
                counts[tuple(event.node.tokens)] += 1
    return counts


@pytest.mark.parametrize(
    ("prefix", "settings"),
    [
        ([BOS], SamplingSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0)),
        (
            [BOS, 4, 8, COMMA],
            SamplingSettings(temperature=0.7, top_k=3, top_p=0.9, min_p=0.05, repetition_penalty=1.3),
        ),
    ],
    ids=["plain", "filtered+penalty"],
)
def test_children_follow_the_conditional_group_distribution(prefix, settings):
    draws = 3000
    expected = expected_group_distribution(prefix, settings)
    counts = sample_groups(prefix, settings, draws, seed=11)
    assert set(counts) <= set(expected), "a sampled group has probability zero under the settings"
    # Pool categories with expected count < 5 so the chi-square approximation holds.
    statistic, dof, small_obs, small_exp = 0.0, -1, 0, 0.0
    for group, p in expected.items():
        if draws * p < 5:
            small_obs += counts[group]
            small_exp += draws * p
            continue
        statistic += (counts[group] - draws * p) ** 2 / (draws * p)
        dof += 1
    if small_exp >= 5:
        statistic += (small_obs - small_exp) ** 2 / small_exp
        dof += 1
    assert dof >= 3
    # Tolerance: reject only beyond the 99.9% quantile (fixed seed, so the outcome is stable).
    assert statistic < chi_square_critical(dof), (statistic, dof, counts.most_common(5))


def test_filtered_settings_exclude_groups():
    settings = SamplingSettings(temperature=1.0, top_k=2, top_p=1.0, min_p=0.0, repetition_penalty=1.0)
    counts = sample_groups([BOS], settings, 400, seed=3)
    firsts = {group[0] for group in counts}
    assert firsts == {4, 5}  # top-2 after BOS


@pytest.fixture(scope="module")
def tiny():
    return random_llama()


def _all_trees(tiny, policy, seed, n=6, **kw):
    settings = SamplingSettings(
        temperature=1.0, top_k=20, top_p=0.95, min_p=0.02, repetition_penalty=1.1, max_new_tokens=32
    )
    separator = frozenset(range(3, 11))  # about one token in eight closes a group
    return tree_sample(
        tiny,
        [1, 10, 11, 12, 13],
        n,
        settings,
        seed=seed,
        policy=policy,
        splitter=SeparatorSplitter(separator, 1),
        eos_ids=[2],
        batch_size=4,
        keep_tree=True,
        **kw,
    ), settings


def _tree_shape(node):
    return (tuple(node.tokens), tuple(_tree_shape(c) for c in node.children))


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_completions_are_samplable_distinct_and_reproducible(tiny, policy):
    result, settings = _all_trees(tiny, policy, seed=5)
    assert len(result.completions) == 6
    ids = [tuple(c.token_ids) for c in result.completions]
    assert len(set(ids)) == len(ids)
    prompt = [1, 10, 11, 12, 13]
    for completion in result.completions:
        full = torch.tensor(prompt + completion.token_ids)
        with torch.no_grad():
            logits = tiny(input_ids=full[None]).logits[0].float()
        for position in range(len(prompt), len(full)):
            seen = torch.zeros((1, tiny.config.vocab_size), dtype=torch.bool)
            seen[0, full[:position]] = True
            probs = allowed_probabilities(logits[position - 1][None], seen, settings)[0]
            assert probs[full[position]] > 0, f"token {int(full[position])} at {position} was not allowed"
        assert completion.finished == (completion.token_ids[-1] == 2)
        assert completion.finished or len(completion.token_ids) == settings.max_new_tokens
    again, _ = _all_trees(tiny, policy, seed=5)
    assert _tree_shape(again.root) == _tree_shape(result.root)
    assert [c.token_ids for c in again.completions] == [c.token_ids for c in result.completions]
    assert again.forward_tokens == result.forward_tokens
    other, _ = _all_trees(tiny, policy, seed=6)
    assert _tree_shape(other.root) != _tree_shape(result.root)


def test_forward_tokens_count_every_position(tiny):
    for policy in ("independent", "rw-mcts"):
        result, _ = _all_trees(tiny, policy, seed=1)
        # Every distinct node's tokens were run through the model (a terminal node's last token is never fed),
        # plus the prompt; discarded duplicates only add to that. Nothing is counted that was not sampled.
        nodes = list(result.root.walk())[1:]
        fed_at_least = result.prompt_tokens + sum(len(n.tokens) - n.terminal for n in nodes)
        assert fed_at_least <= result.forward_tokens <= result.prompt_tokens + result.sampled_tokens


def test_kv_sharing_gives_the_logits_of_a_fresh_forward(tiny):
    result, _ = _all_trees(tiny, "rw-mcts", seed=2)
    checked = 0
    for node in result.root.walk():
        if node.terminal or node.next_token is None:
            continue
        ids = torch.tensor(node.all_ids())
        with torch.no_grad():
            fresh = tiny(input_ids=ids[None]).logits[0, -1].float().softmax(-1)
        expected = fresh[node.next_token.ids]
        torch.testing.assert_close(node.next_token.raw_probs, expected, atol=1e-5, rtol=1e-4)
        checked += 1
    assert checked >= 3


def test_children_share_their_parent_cache_slots(tiny):
    result, _ = _all_trees(tiny, "rw-mcts", seed=3, n=8)
    nodes = list(result.root.walk())
    assert any(len([c for c in n.children if not c.terminal]) >= 2 for n in nodes), "the tree never branched"
    for node in nodes[1:]:
        if node.terminal:
            continue
        parent_slots = node.parent.context_slots
        assert torch.equal(node.context_slots[: len(parent_slots)], parent_slots)
        assert len(node.context_slots) == len(parent_slots) + len(node.tokens)
    # Shared prefixes are stored once: the pool peaked below what separate sequences would hold.
    assert result.cache.peak_slots < sum(result.prompt_tokens + len(c.token_ids) for c in result.completions)


def test_forced_repeats_end_the_search_with_fewer_results():
    settings = SamplingSettings(
        temperature=1.0, top_k=2, top_p=1.0, min_p=0.0, repetition_penalty=1.0, max_new_tokens=3
    )
    # From BOS: top-2 first tokens, then top-2 twice more: at most 8 distinct completions exist.
    result = tree_sample(bigram_model(), [BOS], 50, settings, seed=0, policy="independent", eos_ids=[EOS])
    assert result.exhausted
    texts = [tuple(c.token_ids) for c in result.completions]
    assert len(texts) == len(set(texts)) < 50


def test_cache_pool_bound_is_enforced(tiny):
    with pytest.raises(CachePoolFull, match="max_cache_tokens"):
        _all_trees(tiny, "rw-mcts", seed=1, max_cache_tokens=12)


def test_text_splitter_and_validation(tiny):
    splitter = TextSplitter(
        lambda text: text.count("x") >= 2, lambda ids: "".join("x" if i % 3 == 0 else "y" for i in ids)
    )
    assert not splitter([3, 1])
    assert splitter([3, 1, 6])
    with pytest.raises(ValueError, match="needs a group splitter"):
        tree_sample(tiny, [1, 2], 2, policy="cg-mcts")
    with pytest.raises(ValueError, match="unknown TGTS policy"):
        tree_sample(tiny, [1, 2], 2, policy="beam")


def test_group_score_matches_the_reference_formula():
    probs = [0.5, 0.25, 1.0]
    geometric = (0.5 * 0.25) ** 0.5
    assert group_score(probs, skip_last=True) == pytest.approx((0.25 + 0.5 + geometric) / 3)
    assert group_score(probs, skip_last=False) == pytest.approx((0.25 + 1.0 + (0.125) ** (1 / 3)) / 3)


# ---- the pipeline hook ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tagger():
    """A random LLaMA over a small BPE vocabulary of TIPO-like text (a comma token exists)."""
    import random

    from format_model import _build_tokenizer, synthetic_document

    rng = random.Random(0)
    tokenizer = _build_tokenizer([synthetic_document(rng).text() for _ in range(200)], 400)
    return random_llama(seed=1, vocab=len(tokenizer)), tokenizer


def test_sample_variants_returns_n_completions_for_the_pipeline(tagger):
    from format_model import example_prompt

    from kgen.engine.tgts import sample_variants
    from kgen.generation import Completion

    model, tokenizer = tagger
    settings = SamplingSettings(
        temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0, max_new_tokens=20
    )
    prompt = example_prompt(0)
    result = sample_variants(model, prompt, 5, settings, seed=4, tokenizer=tokenizer, tags_per_group=1)
    assert len(result.variants) == 5
    assert len({v.text for v in result.variants}) == 5
    assert not any(v.repeated for v in result.variants)
    prompt_ids = tokenizer(prompt)["input_ids"][1:]  # without BOS
    for variant in result.variants:
        body = [t for t in variant.token_ids if t != tokenizer.eos_token_id]
        # The text is exactly what follows the prompt when prompt and continuation are decoded together.
        assert tokenizer.decode(prompt_ids + body) == tokenizer.decode(prompt_ids) + variant.text
        assert "</s>" not in variant.text and "<s>" not in variant.text
    completions = result.completions()
    assert all(isinstance(c, Completion) for c in completions)
    assert [c.completion_tokens for c in completions] == [len(v.token_ids) for v in result.variants]
    again = sample_variants(model, prompt, 5, settings, seed=4, tokenizer=tokenizer, tags_per_group=1)
    assert [v.text for v in again.variants] == [v.text for v in result.variants]


def test_sample_variants_accepts_the_hf_backend(tagger):
    from kgen.engine.hf import HFBackend
    from kgen.engine.tgts import sample_variants

    model, tokenizer = tagger
    backend = HFBackend(model, tokenizer, device="cpu", dtype="float32")
    settings = SamplingSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, max_new_tokens=12)
    result = sample_variants(backend, "tag: 1girl, solo", 3, settings, seed=0, policy="cg-mcts")
    assert len(result.variants) == 3


def test_sample_variants_repeats_only_when_forced():
    from kgen.engine.tgts import sample_variants

    class Digits:
        """Minimal tokenizer over the bigram vocabulary."""

        bos_token_id, eos_token_id, pad_token_id = BOS, EOS, PAD

        def __call__(self, text):
            return {"input_ids": [BOS]}

        def get_vocab(self):
            return {str(i): i for i in range(VOCAB)}

        def convert_tokens_to_string(self, tokens):
            return "," if tokens == [str(COMMA)] else " ".join(tokens)

        def decode(self, ids, **_):
            return " ".join(str(i) for i in ids)

    settings = SamplingSettings(
        temperature=1.0, top_k=2, top_p=1.0, min_p=0.0, repetition_penalty=1.0, max_new_tokens=3
    )
    result = sample_variants(
        bigram_model(), "", 30, settings, seed=0, tokenizer=Digits(), policy="independent"
    )
    distinct = [v for v in result.variants if not v.repeated]
    assert len(result.variants) == 30
    assert len({v.text for v in distinct}) == len(distinct) <= 8
    assert {v.text for v in result.variants} == {v.text for v in distinct}


def _format_model_or_skip():
    from format_model import format_model_or_skip

    return format_model_or_skip()


@pytest.mark.slow
def test_format_model_variants_are_distinct_parseable_tag_lists():
    from format_model import example_prompt

    from kgen.engine.tgts import sample_variants

    model, tokenizer = _format_model_or_skip()
    settings = SamplingSettings(
        temperature=1.0, top_k=0, top_p=1.0, min_p=0.1, repetition_penalty=1.0, max_new_tokens=320
    )
    result = sample_variants(model, example_prompt(3), 8, settings, seed=0, tokenizer=tokenizer)
    texts = [v.text for v in result.variants]
    assert len(set(texts)) == 8
    for variant in result.variants:
        assert variant.finished
        tags = [t.strip() for t in variant.text.split(",")]
        assert tags[0] == ""  # the continuation starts right after the prompt's last tag: ", next tag, ..."
        assert len(tags) > 5 and all(tags[1:]), variant.text
    separate = sum(result.prompt_tokens + len(v.token_ids) for v in result.variants)
    assert result.forward_tokens < separate
