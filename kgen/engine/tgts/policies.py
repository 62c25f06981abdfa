"""Search policies: where the tree grows next.

Each policy answers ``select(root)`` with a :class:`Launch` (grow one group below a node, or roll out to a
terminal node) and keeps its statistics up to date from the engine's events. Several launches are in flight at
once (one batched forward advances them all); in-flight growths count as visits with no value ("virtual loss")
so that concurrent selections spread out.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from .tree import Growth, Node

SQRT2 = math.sqrt(2.0)


@dataclass(frozen=True)
class Launch:
    node: Node
    rollout: bool


class SearchPolicy:
    name = "policy"
    splits_groups = True  # False: whole completions are single groups (no sharing below the prompt)

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def prepare(self, n: int) -> None:
        """Called once before the search with the number of completions wanted."""

    def select(self, root: Node) -> Launch | None:
        raise NotImplementedError

    def on_node(self, node: Node, new: bool, growth: Growth) -> None:
        """A growth closed a group: ``node`` is new, or the existing sibling it duplicated."""

    def on_growth_end(self, growth: Growth, leaf: Node | None) -> None:
        """A growth stopped; ``leaf`` is set when it produced a new completion."""


def _backpropagate(node: Node | None, value: float) -> None:
    while node is not None:
        node.visits += 1
        node.value += value
        node = node.parent


def _open(node: Node) -> bool:
    return not node.terminal and not node.exhausted


class IndependentSampling(SearchPolicy):
    """Baseline: every completion sampled from the prompt on its own (the prompt is prefilled once)."""

    name = "independent"
    splits_groups = False

    def select(self, root: Node) -> Launch | None:
        return None if root.exhausted else Launch(root, rollout=True)


class GreedyTree(SearchPolicy):
    """Best-first descent: ``width`` first groups, then always extend the child of highest score.

    As in the reference, scores are not propagated, so the search finishes the best path and then adds
    siblings as deep as possible: the cheapest policy and the least diverse one.
    """

    name = "greedy"

    def __init__(self, rng: random.Random, width: int = 4) -> None:
        super().__init__(rng)
        self.width = width

    def select(self, root: Node) -> Launch | None:
        if root.exhausted:
            return None
        if len(root.children) + root.pending < self.width:
            return Launch(root, rollout=False)
        node = root
        while True:
            candidates = [c for c in node.children if _open(c)]
            if not candidates:
                break
            node = max(candidates, key=lambda c: c.score)
        if node.exhausted:
            return None
        return Launch(node, rollout=False)


class CGMCTS(SearchPolicy):
    """MCTS with UCT selection and progressive widening (the reference's "CG-MCTS").

    A node may have ``ceil(sqrt(2) * visits ** alpha)`` children, ``alpha = 0.5 ** (1 + sqrt(2) ** depth)``,
    so the tree is wide near the root and narrow deep down. An unvisited node is rolled out to a completion; a
    visited one gets one more child. Nodes created by a rollout stay inactive (not selectable) until their
    parent is widened.
    """

    name = "cg-mcts"

    def __init__(self, rng: random.Random, exploration: float = 1.0) -> None:
        super().__init__(rng)
        self.exploration = exploration

    @staticmethod
    def allowed_children(node: Node) -> int:
        alpha = 0.5 ** (1 + SQRT2**node.depth)
        return math.ceil(SQRT2 * max(node.visits + node.pending, 1) ** alpha)

    def _uct(self, child: Node, parent: Node) -> float:
        visits = child.visits + child.pending
        if visits == 0:
            return math.inf
        parent_visits = max(parent.visits + parent.pending, 1)
        return child.value / visits + self.exploration * math.sqrt(math.log(parent_visits) / visits)

    def select(self, root: Node) -> Launch | None:
        for _ in range(64):  # bookkeeping passes (see below) end quickly: each one adds a visit
            if root.exhausted:
                return None
            node = root
            while True:
                selectable = [c for c in node.children if c.active and not c.spent and _open(c)]
                if not selectable or self.allowed_children(node) > len(node.children) + node.pending:
                    break
                node = max(selectable, key=lambda c: self._uct(c, node))
            if node.visits + node.pending == 0:
                return Launch(node, rollout=True)
            if self.allowed_children(node) > len(node.children) + node.pending:
                return Launch(node, rollout=False)
            if node.pending:
                return None  # wait for the growths in flight here before widening further
            # Widening not allowed yet and nothing selectable below: count a visit (as the reference's empty
            # expansion does) and activate the rollout children so the search can descend next time.
            _backpropagate(node, 0.0)
            for child in node.children:
                child.active = True
        return None

    def on_node(self, node: Node, new: bool, growth: Growth) -> None:
        if not new:
            return
        if growth.rollout:
            node.active = False
            _backpropagate(node, node.score)
        else:
            for sibling in node.parent.children:
                sibling.active = True
            if node.terminal:
                _backpropagate(node, node.score)

    def on_growth_end(self, growth: Growth, leaf: Node | None) -> None:
        if leaf is not None:
            leaf.spent = True


class RWMCTS(SearchPolicy):
    """Random-walk MCTS (the reference's "RW-MCTS"): softmax over UCT scores, with a "self" virtual child.

    At each node the walk picks a child, or the node itself (grow a new child here), with probability
    proportional to ``exp(UCT)``; the self option scores the mean value of the children created at this node.
    Every selection rolls out to a completion; the rollout's groups join the tree.

    ``root_branches`` first rollouts start at the root (default ``ceil(n / c)``, cluster size
    ``c = clamp(n // 8, 2, 3)``): independent "clusters" that later walks branch off deep inside, which keeps
    most pairs of variants unrelated while each variant reuses much of an earlier one's computation. A walk
    never enters a subtree whose rollout is still growing (it waits instead), so concurrency does not make
    the tree shallower. ``exploration`` scales the children's UCT weight ``8 / depth`` of the reference; its
    experiments used 1-2, our benchmark (tests/benchmarks/tgts.py) found 5 keeps diversity within about 10%
    of independent sampling at half the tokens.
    """

    name = "rw-mcts"

    def __init__(
        self, rng: random.Random, exploration: float = 5.0, root_branches: int | None = None
    ) -> None:
        super().__init__(rng)
        self.exploration = 8.0 * exploration
        self.root_branches = root_branches
        self._root_branches = root_branches or 1

    def prepare(self, n: int) -> None:
        cluster = min(3, max(2, n // 8))
        self._root_branches = self.root_branches or max(1, math.ceil(n / cluster))

    @staticmethod
    def _uct(child: Node, parent: Node, weight: float) -> float:
        if child.visits == 0:
            return math.inf
        return child.value / child.visits + weight * math.sqrt(math.log(max(parent.visits, 1)) / child.visits)

    @staticmethod
    def _self_uct(node: Node, weight: float) -> float:
        if node.self_visits == 0:
            return math.inf
        return node.self_value / node.self_visits + weight * math.sqrt(
            math.log(max(node.visits, 1)) / node.self_visits
        )

    def select(self, root: Node) -> Launch | None:
        if root.exhausted:
            return None
        if len(root.children) + root.pending < self._root_branches:
            return Launch(root, rollout=True)
        if not root.children:
            return None  # wait for the first groups before walking
        node, depth = root, 0
        while node.children:
            depth += 1
            if all(c.terminal for c in node.children):
                break
            options = [c for c in node.children if not c.exhausted]
            weight = self.exploration / depth
            scores = [self._uct(c, node, weight) for c in options] + [self._self_uct(node, 0.5)]
            choice = self._softmax_choice(scores)
            if choice == len(options):
                break
            chosen = options[choice]
            if chosen.terminal:
                break
            if chosen.busy:
                return None  # a rollout is still growing there: wait for it rather than branch blindly
            node = chosen
        if node.exhausted:
            return None
        return Launch(node, rollout=True)

    def _softmax_choice(self, scores: list[float]) -> int:
        infinite = [i for i, s in enumerate(scores) if math.isinf(s)]
        if infinite:
            return infinite[self.rng.randrange(len(infinite))]
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        return self.rng.choices(range(len(scores)), weights=weights)[0]

    def on_node(self, node: Node, new: bool, growth: Growth) -> None:
        _backpropagate(node, node.score)
        if new and node.parent is not None:
            node.parent.self_visits += 1
            node.parent.self_value += node.score


POLICIES = {cls.name: cls for cls in (IndependentSampling, GreedyTree, CGMCTS, RWMCTS)}


def make_policy(name: str, seed: int, **options) -> SearchPolicy:
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown TGTS policy {name!r}; choose one of: {', '.join(POLICIES)}") from None
    return cls(random.Random(seed), **options)
