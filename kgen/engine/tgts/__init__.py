"""TGTS: token-group tree sampling of many distinct prompt variants that share their common prefixes.

Needs torch; the protocol layer never imports this package at module import time.
"""

from .cache import CachePoolFull, CacheStats, KVPool
from .policies import CGMCTS, POLICIES, RWMCTS, GreedyTree, IndependentSampling, SearchPolicy, make_policy
from .sampler import TreeCompletion, TreeSampleResult, Variant, VariantsResult, sample_variants, tree_sample
from .splitters import (
    AnySplitter,
    SeparatorSplitter,
    TextSplitter,
    never_split,
    separator_token_ids,
    tag_splitter,
)
from .tree import Node, TreeEngine, group_score

__all__ = [
    "CGMCTS",
    "POLICIES",
    "RWMCTS",
    "AnySplitter",
    "CachePoolFull",
    "CacheStats",
    "GreedyTree",
    "IndependentSampling",
    "KVPool",
    "Node",
    "SearchPolicy",
    "SeparatorSplitter",
    "TextSplitter",
    "TreeCompletion",
    "TreeEngine",
    "TreeSampleResult",
    "Variant",
    "VariantsResult",
    "group_score",
    "make_policy",
    "never_split",
    "sample_variants",
    "separator_token_ids",
    "tag_splitter",
    "tree_sample",
]
