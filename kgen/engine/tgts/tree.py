"""Tree nodes (token groups) and the batched engine that grows them from pooled KV caches."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ...generation import SamplingSettings
from ..sampling import build_chain
from ..transformer.runners import as_runner
from .cache import KVPool
from .distribution import NextToken, allowed_probabilities, sample_rows

GroupSplitter = Callable[[Sequence[int]], bool]


@dataclass(eq=False)
class Node:
    """A group of tokens. The root holds the prompt; a path root -> terminal node is one completion."""

    index: int
    parent: Node | None
    tokens: list[int]
    depth: int
    generated: int  # completion tokens from the root's end up to the end of this node
    score: float
    terminal: bool = False  # ended with EOS or at max_new_tokens: never has children
    finished: bool = False  # ended with EOS
    context_slots: torch.Tensor | None = None  # pool slots of every token root..self (None once terminal)
    next_token: NextToken | None = None  # distribution of a child's first token
    children: list[Node] = field(default_factory=list)
    own_slots: list[int] = field(default_factory=list)
    # search statistics (owned by the policies; the engine only maintains pending/duplicates/exhausted)
    visits: int = 0
    value: float = 0.0
    self_visits: int = 0
    self_value: float = 0.0
    pending: int = 0  # growths in flight whose next group will become a child of this node
    busy: int = 0  # growths in flight at or below this node
    active: bool = True
    spent: bool = False
    duplicate_hits: int = 0
    exhausted: bool = False  # no new distinct completion is expected below this node

    def path(self) -> list[Node]:
        nodes = []
        node: Node | None = self
        while node is not None:
            nodes.append(node)
            node = node.parent
        return nodes[::-1]

    def completion_ids(self) -> list[int]:
        return [token for node in self.path()[1:] for token in node.tokens]

    def all_ids(self) -> list[int]:
        return [token for node in self.path() for token in node.tokens]

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass(eq=False)
class Growth:
    """A sequence being decoded token by token: the next group below ``parent``."""

    ticket: int
    parent: Node
    rollout: bool  # keep going group after group until a terminal node
    generator: torch.Generator
    seen: torch.Tensor  # [vocab] bool: tokens in the sequence so far (repetition penalty)
    tokens: list[int] = field(default_factory=list)
    raw_probs: list[float] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    unfed: int | None = None  # the last sampled token, not yet run through the model
    closing: bool = False  # the group ends once ``unfed`` is fed (its logits seed the children)


@dataclass(frozen=True)
class NodeEvent:
    node: Node
    new: bool  # False: the group duplicated an existing sibling, which ``node`` is
    growth: Growth


@dataclass(frozen=True)
class GrowthEnd:
    growth: Growth
    leaf: Node | None  # a new terminal node: one more distinct completion


def group_score(raw_probs: Sequence[float], skip_last: bool) -> float:
    """Mean of the min, max and geometric mean of the chosen tokens' model probabilities.

    The closing separator (usually near-certain) or EOS is left out, as in the reference.
    """
    scored = list(raw_probs[:-1] if skip_last and len(raw_probs) > 1 else raw_probs)
    if not scored:
        return 0.0
    geometric = math.exp(sum(math.log(max(p, 1e-30)) for p in scored) / len(scored))
    return (min(scored) + max(scored) + geometric) / 3


def _mix_seed(seed: int, ticket: int) -> int:
    """SplitMix64 of (seed, ticket): well-separated per-growth generator seeds."""
    z = (seed * 0x9E3779B97F4A7C15 + ticket + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


class TreeEngine:
    """Grows token groups for many growths at once: one batched forward per step."""

    def __init__(
        self,
        model,
        settings: SamplingSettings,
        splitter: GroupSplitter,
        eos_ids: Sequence[int],
        seed: int,
        max_cache_tokens: int,
    ) -> None:
        self.runner = runner = as_runner(model)  # a transformers model or a runner (an HF backend's)
        self.device = runner.device
        self.settings = settings
        self.chain = build_chain(settings)
        self.splitter = splitter
        self.eos_ids = frozenset(int(i) for i in eos_ids)
        self.seed = seed
        self.vocab = runner.vocab_size
        # One dtype for keys/values of every batch size the tree runs (the prompt is one row).
        template = runner.new_cache(2, 1)
        self.pool = KVPool.like(template, max_cache_tokens, initial_slots=min(max_cache_tokens, 1024))
        self.forward_tokens = 0
        self.forward_calls = 0
        self.sampled_tokens = 0
        self.nodes = 0
        self.active: list[Growth] = []
        self._tickets = 0
        self.root: Node | None = None

    # ---- setup -------------------------------------------------------------------------------------------
    def start(self, prompt_ids: Sequence[int]) -> Node:
        if not prompt_ids:
            raise ValueError("the prompt must contain at least one token")
        device = self.device
        length = len(prompt_ids)
        ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
        slots = self.pool.allocate(length)
        slot_tensor = torch.tensor(slots, dtype=torch.long, device=device)
        positions = torch.arange(length, device=device)[None]
        cache = self.pool.gather(torch.zeros((1, 0), dtype=torch.long, device=device), length)
        causal = torch.ones((length, length), dtype=torch.bool, device=device).tril()
        logits = self.runner.forward(ids, positions, cache, 0, causal[None, None], prompt=True)
        self.pool.store(cache, 0, slot_tensor[None])
        self.forward_tokens += len(prompt_ids)
        self.forward_calls += 1
        seen = self._seen_of(list(prompt_ids))
        probs = allowed_probabilities(logits, seen[None], self.chain)[0]
        root = Node(0, None, list(prompt_ids), 0, 0, 1.0, context_slots=slot_tensor, own_slots=slots)
        root.next_token = NextToken.from_row(probs, logits[0].softmax(-1))
        self.root = root
        self.nodes = 1
        return root

    def _seen_of(self, ids: Sequence[int]) -> torch.Tensor:
        seen = torch.zeros(self.vocab, dtype=torch.bool, device=self.device)
        if ids:
            seen[torch.tensor(list(ids), dtype=torch.long, device=self.device)] = True
        return seen

    def launch(self, node: Node, rollout: bool) -> Growth:
        """Start growing a new child group of ``node`` (and, for a rollout, its descendants)."""
        if node.terminal or node.next_token is None:
            raise ValueError("cannot grow below a terminal node")
        generator = torch.Generator(device="cpu")  # the sampler chain draws its uniforms on the CPU
        generator.manual_seed(_mix_seed(self.seed, self._tickets))
        growth = Growth(self._tickets, node, rollout, generator, self._seen_of(node.all_ids()))
        self._tickets += 1
        node.pending += 1
        for ancestor in node.path():
            ancestor.busy += 1
        self.active.append(growth)
        return growth

    # ---- one step ----------------------------------------------------------------------------------------
    def step(self) -> list[NodeEvent | GrowthEnd]:
        """Sample first tokens from cached distributions, then one batched forward for every fed growth."""
        events: list[NodeEvent | GrowthEnd] = []
        for growth in list(self.active):
            if not growth.tokens and growth.unfed is None:
                self._accept(growth, *growth.parent.next_token.sample(growth.generator), events)
        feeding = [g for g in self.active if g.unfed is not None]
        if not feeding:
            return events
        logits = self._forward(feeding)
        seen = torch.stack([g.seen for g in feeding])
        raw = logits.softmax(-1)
        closing = [row for row, g in enumerate(feeding) if g.closing]
        drawing = [row for row, g in enumerate(feeding) if not g.closing]
        tokens: dict[int, int] = {}
        if drawing:
            index = torch.tensor(drawing, device=logits.device)
            generators = [feeding[row].generator for row in drawing]
            drawn = sample_rows(self.chain, logits[index], seen[index], generators)
            tokens = dict(zip(drawing, drawn.tolist(), strict=True))
        if closing:
            index = torch.tensor(closing, device=logits.device)
            probs = allowed_probabilities(logits[index], seen[index], self.chain)
            next_tokens = {row: NextToken.from_row(probs[i], raw[row]) for i, row in enumerate(closing)}
        for row, growth in enumerate(feeding):
            if growth.closing:
                self._close(growth, next_tokens[row], events)
            else:
                self._accept(growth, tokens[row], float(raw[row, tokens[row]]), events)
        return events

    def _forward(self, rows: list[Growth]) -> torch.Tensor:
        device = self.device
        contexts = []
        for g in rows:
            own = torch.tensor(g.slots, dtype=torch.long, device=device)
            contexts.append(torch.cat([g.parent.context_slots, own]) if g.slots else g.parent.context_slots)
        width = max(len(c) for c in contexts)
        index = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        # Each row's one new token (slot ``width``) sees its context (left-padded) and itself.
        mask = torch.zeros((len(rows), 1, 1, width + 1), dtype=torch.bool, device=device)
        mask[:, :, :, width] = True
        for i, context in enumerate(contexts):
            index[i, width - len(context) :] = context
            mask[i, :, :, width - len(context) : width] = True
        new_slots = self.pool.allocate(len(rows))
        for g, slot in zip(rows, new_slots, strict=True):
            g.slots.append(slot)
        input_ids = torch.tensor([[g.unfed] for g in rows], dtype=torch.long, device=device)
        positions = torch.tensor([[len(c)] for c in contexts], dtype=torch.long, device=device)
        slot_tensor = torch.tensor(new_slots, dtype=torch.long, device=device)[:, None]
        cache = self.pool.gather(index, 1)
        logits = self.runner.forward(input_ids, positions, cache, width, mask)
        self.pool.store(cache, width, slot_tensor)
        self.forward_tokens += len(rows)
        self.forward_calls += 1
        for g in rows:
            g.unfed = None
        return logits

    def _accept(self, growth: Growth, token: int, raw_prob: float, events: list) -> None:
        growth.tokens.append(token)
        growth.raw_probs.append(raw_prob)
        growth.seen[token] = True
        self.sampled_tokens += 1
        generated = growth.parent.generated + len(growth.tokens)
        if token in self.eos_ids:
            self._finish(growth, None, events, terminal=True, finished=True)
        elif generated >= self.settings.max_new_tokens:
            self._finish(growth, None, events, terminal=True, finished=False)
        else:
            growth.unfed = token
            growth.closing = bool(self.splitter(growth.tokens))

    def _close(self, growth: Growth, next_token: NextToken, events: list) -> None:
        self._finish(growth, next_token, events, terminal=False, finished=False)

    def _finish(
        self, growth: Growth, next_token: NextToken | None, events: list, terminal: bool, finished: bool
    ) -> None:
        parent = growth.parent
        parent.pending -= 1
        existing = next((c for c in parent.children if c.tokens == growth.tokens), None)
        if existing is not None:
            self.pool.release(growth.slots)
            parent.duplicate_hits += 1
            node, new = existing, False
            self._update_exhausted(parent)
        else:
            node = Node(
                self.nodes,
                parent,
                list(growth.tokens),
                parent.depth + 1,
                parent.generated + len(growth.tokens),
                group_score(growth.raw_probs, skip_last=finished or growth.closing),
                terminal=terminal,
                finished=finished,
                next_token=next_token,
                own_slots=list(growth.slots),
            )
            self.nodes += 1
            if terminal:
                self.pool.release(growth.slots)
                node.own_slots = []
            else:
                own = torch.tensor(growth.slots, dtype=torch.long, device=self.device)
                node.context_slots = torch.cat([parent.context_slots, own])
            parent.children.append(node)
            new = True
        events.append(NodeEvent(node, new, growth))
        if node.terminal or not growth.rollout:
            self.active.remove(growth)
            for ancestor in parent.path():
                ancestor.busy -= 1
            events.append(GrowthEnd(growth, node if (new and node.terminal) else None))
            return
        # A rollout continues below the node it just produced (or joined).
        growth.parent = node
        growth.tokens, growth.raw_probs, growth.slots = [], [], []
        growth.closing = False
        node.pending += 1
        node.busy += 1
        self._accept(growth, *node.next_token.sample(growth.generator), events)

    def _update_exhausted(self, node: Node | None) -> None:
        while node is not None and not node.exhausted:
            saturated = node.duplicate_hits >= 2 * len(node.children) + 4
            if not (saturated and all(c.terminal or c.exhausted for c in node.children)):
                return
            node.exhausted = True
            node = node.parent

    def release_all(self) -> None:
        """Free the pool (the tree's token ids stay readable)."""
        self.pool = None  # type: ignore[assignment]
        self.active.clear()
