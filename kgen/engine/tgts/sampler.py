"""Token-group tree sampling: N distinct completions of one prompt that share their common prefixes."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ...generation import Completion, SamplingSettings
from ..continuation import ContinuationDecoder
from .cache import CacheStats
from .policies import POLICIES, SearchPolicy, make_policy
from .splitters import GroupSplitter, never_split, tag_splitter
from .tree import GrowthEnd, Node, NodeEvent, TreeEngine


@dataclass(frozen=True)
class TreeCompletion:
    """One completion: a root-to-terminal path of the tree."""

    token_ids: list[int]
    text: str
    score: float  # mean node score along the path
    groups: int  # number of token groups (tree depth of the terminal node)
    finished: bool  # ended with EOS (False: cut at max_new_tokens)


@dataclass
class TreeSampleResult:
    completions: list[TreeCompletion]
    policy: str
    prompt_tokens: int
    forward_tokens: int  # every token position run through the model, the prompt's included
    forward_calls: int
    sampled_tokens: int
    nodes: int
    seconds: float
    cache: CacheStats
    exhausted: bool  # fewer distinct completions exist (as far as the search could tell) than were asked for
    root: Node | None = field(default=None, repr=False)

    @property
    def independent_forward_tokens(self) -> int:
        """What N separate generations of these completions would run: each prefills the prompt."""
        return sum(self.prompt_tokens + len(c.token_ids) for c in self.completions)


def tree_sample(
    model,
    prompt_ids: Sequence[int],
    n: int,
    settings: SamplingSettings | None = None,
    seed: int = 0,
    policy: str | SearchPolicy = "rw-mcts",
    splitter: GroupSplitter | None = None,
    eos_ids: Sequence[int] = (),
    decode=None,
    batch_size: int = 16,
    max_cache_tokens: int | None = None,
    max_growths: int | None = None,
    policy_options: dict | None = None,
    keep_tree: bool = False,
) -> TreeSampleResult:
    """Grow a sampling tree over ``model`` until ``n`` distinct completions exist.

    ``model``: a transformers causal LM or a runner (``kgen.engine.transformer.runners``, e.g. an HF
    backend's ``runner``).

    ``splitter`` closes token groups (see :mod:`kgen.engine.tgts.splitters`; required unless the policy is
    ``independent``). ``batch_size`` growths advance together, one batched forward per token.
    ``max_cache_tokens`` bounds the KV pool (default: prompt + ``n`` x ``max_new_tokens``, which the pool only
    reaches if every completion is a separate branch); ``max_growths`` bounds the search
    (default ``20 n + 50``). Deterministic for ``seed``.
    """
    settings = settings or SamplingSettings()
    if n < 1:
        raise ValueError("n must be >= 1")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    started = time.perf_counter()
    if isinstance(policy, str):
        policy = make_policy(policy, seed, **(policy_options or {}))
    if policy.splits_groups:
        if splitter is None:
            raise ValueError(
                f"policy {policy.name!r} needs a group splitter (e.g. kgen.engine.tgts.tag_splitter)"
            )
    else:
        splitter = never_split
    if max_cache_tokens is None:
        max_cache_tokens = len(prompt_ids) + (n + batch_size) * settings.max_new_tokens
    policy.prepare(n)
    engine = TreeEngine(model, settings, splitter, eos_ids, seed, max_cache_tokens)
    root = engine.start(prompt_ids)
    max_growths = 20 * n + 50 if max_growths is None else max_growths

    leaves = _grow(engine, policy, root, n, batch_size, max_growths)
    completions = [_completion(leaf, decode) for leaf in leaves]
    cache = engine.pool.stats()
    engine.release_all()
    return TreeSampleResult(
        completions=completions,
        policy=policy.name,
        prompt_tokens=len(prompt_ids),
        forward_tokens=engine.forward_tokens,
        forward_calls=engine.forward_calls,
        sampled_tokens=engine.sampled_tokens,
        nodes=engine.nodes,
        seconds=time.perf_counter() - started,
        cache=cache,
        exhausted=len(completions) < n,
        root=root if keep_tree else None,
    )


def _grow(
    engine: TreeEngine, policy: SearchPolicy, root: Node, n: int, batch_size: int, max_growths: int
) -> list[Node]:
    """Launch growths where ``policy`` says until ``n`` new terminal nodes exist (or nothing is left)."""
    leaves: list[Node] = []
    launched = 0
    while len(leaves) < n:
        wanted = min(batch_size, n - len(leaves))
        while len(engine.active) < wanted and launched < max_growths:
            launch = policy.select(root)
            if launch is None:
                break
            engine.launch(launch.node, launch.rollout)
            launched += 1
        if not engine.active:
            break
        for event in engine.step():
            if isinstance(event, NodeEvent):
                policy.on_node(event.node, event.new, event.growth)
            elif isinstance(event, GrowthEnd):
                policy.on_growth_end(event.growth, event.leaf)
                if event.leaf is not None and len(leaves) < n:
                    leaves.append(event.leaf)
    # Growths still in flight (n reached) are dropped; their tokens were spent and are counted.
    engine.active.clear()
    return leaves


def _completion(leaf: Node, decode) -> TreeCompletion:
    ids = leaf.completion_ids()
    path = leaf.path()[1:]
    return TreeCompletion(
        token_ids=ids,
        text=decode(ids) if decode is not None else "",
        score=sum(node.score for node in path) / len(path),
        groups=len(path),
        finished=leaf.finished,
    )


@dataclass(frozen=True)
class Variant:
    """One prompt variant for the pipeline: a continuation of the model input."""

    text: str  # decoded like ``Completion.text``: BOS/EOS/padding dropped, added tokens kept
    token_ids: list[int]
    score: float
    finished: bool
    repeated: bool  # True when fewer distinct completions existed and this one repeats an earlier one


@dataclass(frozen=True)
class VariantsResult:
    variants: list[Variant]
    policy: str
    prompt_tokens: int
    forward_tokens: int  # the whole tree's cost, prompt included
    seconds: float
    cache: CacheStats

    def completions(self) -> list[Completion]:
        """The variants as backend ``Completion`` objects (the tree's time split evenly among them)."""
        share = self.seconds / max(1, len(self.variants))
        return [
            Completion(v.text, self.prompt_tokens, len(v.token_ids), share, v.finished) for v in self.variants
        ]


def _resolve_model_and_tokenizer(backend_or_model, tokenizer):
    """A transformers model (+ tokenizer), or a backend's runner and tokenizer (the HF backend's)."""
    import torch

    if isinstance(backend_or_model, torch.nn.Module):
        return backend_or_model, tokenizer
    runner = getattr(backend_or_model, "runner", None)
    if runner is not None and hasattr(runner, "forward"):
        return runner, tokenizer or getattr(backend_or_model, "tokenizer", None)
    raise TypeError(
        "sample_variants needs a transformers causal LM or a backend with .runner and .tokenizer "
        f"(got {type(backend_or_model).__name__}); GGUF/llama.cpp backends do not support TGTS"
    )


def sample_variants(
    backend_or_model,
    prompt: str,
    n: int,
    settings: SamplingSettings | None = None,
    seed: int = 0,
    policy: str = "rw-mcts",
    tokenizer=None,
    tags_per_group: int = 8,
    batch_size: int = 16,
    max_cache_tokens: int | None = None,
    policy_options: dict | None = None,
) -> VariantsResult:
    """``n`` continuations of the model input ``prompt`` (one per image), sharing computation in a TGTS tree.

    ``backend_or_model``: the HF backend (anything with ``.runner`` and ``.tokenizer``) or a transformers
    causal LM plus ``tokenizer``. Returns exactly ``n`` variants: distinct ones first; if the model cannot
    produce ``n`` distinct completions, earlier ones repeat (``Variant.repeated``). Deterministic for
    ``seed``. ``policy``: "rw-mcts" (default, best measured), "cg-mcts", "greedy" or "independent".
    """
    settings = settings or SamplingSettings()
    model, tokenizer = _resolve_model_and_tokenizer(backend_or_model, tokenizer)
    if tokenizer is None:
        raise ValueError("sample_variants needs the model's tokenizer")
    if policy not in POLICIES:
        raise ValueError(f"unknown TGTS policy {policy!r}; choose one of: {', '.join(POLICIES)}")
    prompt_ids = list(tokenizer(prompt)["input_ids"])
    eos = getattr(backend_or_model, "eos_id", None)
    eos = eos if eos is not None else tokenizer.eos_token_id
    special = (tokenizer.bos_token_id, eos, tokenizer.pad_token_id)
    hidden = {i for i in special if i is not None}
    splitter = tag_splitter(tokenizer, tags_per_group) if POLICIES[policy].splits_groups else None
    result = tree_sample(
        model,
        prompt_ids,
        n,
        settings,
        seed,
        policy,
        splitter=splitter,
        eos_ids=[eos] if eos is not None else [],
        decode=ContinuationDecoder(tokenizer, prompt_ids, hidden),
        batch_size=batch_size,
        max_cache_tokens=max_cache_tokens,
        policy_options=policy_options,
    )
    if not result.completions:
        raise RuntimeError("TGTS produced no completion")
    variants = [Variant(c.text, c.token_ids, c.score, c.finished, False) for c in result.completions]
    distinct = list(variants)
    order = random.Random(seed)
    while len(variants) < n:
        again = order.choice(distinct)
        variants.append(Variant(again.text, again.token_ids, again.score, again.finished, True))
    return VariantsResult(
        variants, result.policy, result.prompt_tokens, result.forward_tokens, result.seconds, result.cache
    )
