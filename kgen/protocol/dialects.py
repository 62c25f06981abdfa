"""What differs between TIPO generations in the text a model was trained on.

TIPO v1 (TIPO-100M ... TIPO-500M-ft), TIPOv2-1B-A200M and TIPO-v2.1-1B-A200M share the prompt
layout (``key: value`` metadata lines, a ``target:`` line, a ``tag:`` line that ends mid-line) but
not every convention. A :class:`TipoDialect` holds the conventions that differ; ``kgen.protocol.tipo`` builds
the prompt and asks the dialect. Each TIPO ``kgen.models.registry.ModelSpec`` names its dialect
(:func:`dialect_named` maps the name to the object).

The attribute names (``meta_order``, ``general_categories``, ``has_quality``, ``meta_values``,
``end_tokens``, ``strip_tokens``, ``field_keys``) are the ones ``kgen.protocol.tipo`` reads.

Sources (README "TIPO v2 / v2.1" lists what stays unverified):

* v1: the reference engine tipo-kgen 0.3.1, which the v1 models are known to work with.
* v2: the public KohakUwULLM training code (``data/renderers/tipo.py``, ``data/sources/vault.py``):
  the rating line carries the raw Danbooru rating, quality is one word bucketed from the post score
  (``masterpiece`` ... ``worst quality``), metadata lines are shuffled in training (their order does
  not matter), tasks that neither read nor write tags have no length token on the ``target:`` line.
* v2.1: the TIPO-v2.1-1B-A200M model card as reported by third parties: ratings mapped to TIPO words
  (``general`` -> ``safe``, ``questionable`` -> ``nsfw``, ``explicit`` -> ``nsfw, explicit``),
  person-count tags a category of their own placed first, quality recalibrated per year with the era
  word (``newest`` ... ``old``) part of the quality signal, context 4096.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .lengths import Length
from .tags import TagCategory

ERA_WORDS = ("newest", "recent", "mid", "early", "old")

# Tasks the v1 reference engine requests, in the order its planner names them.
V1_MODES = (
    "tag_to_long",
    "long_to_tag",
    "short_to_tag",
    "short_to_tag_to_long",
    "tag_to_short_to_long",
    "tag_to_long_to_short",
    "tag_to_short",
)
V1_TASKS = frozenset(V1_MODES)
# Tasks of the public v2 training renderer.
V2_TASKS = frozenset(
    {
        "tag_to_long",
        "long_to_tag",
        "short_to_tag",
        "short_to_long",
        "tag_to_short_to_long",
        "short_to_tag_to_long",
        "short_to_long_to_tag",
    }
)
# Line keys other than the tag categories that a TIPO completion may contain.
_FIELD_KEYS = ("aspect ratio", "aspect_ratio", "target", "tag", "short", "long")


@dataclass(frozen=True)
class TipoDialect:
    """Conventions of one TIPO generation.

    ``meta_order``: categories written as ``key: values`` lines above ``target:``, in order.
    ``general_categories``: categories of the ``tag:`` line, in order (person-count tags first).
    ``has_quality``: the model was trained with a ``quality:`` line.
    ``rating_map``: (user rating tag in lower case, the text the model was trained with) pairs; other
    tags pass unchanged. ``quality_words`` then ``era_words``: the order of the quality line (unknown
    quality tags keep their place after them); empty vocabularies keep the user's order.
    ``length_on_nl_tasks``: whether a task that neither reads nor writes tags still carries
    ``<|length|>`` on the ``target:`` line. ``tasks``: task names the model was trained on.
    ``end_tokens`` end a completion; ``strip_tokens`` are removed wherever they appear.
    """

    name: str = "tipo-v1"
    aspect_ratio_key: str = "aspect ratio"
    meta_order: tuple[TagCategory, ...] = (
        TagCategory.META,
        TagCategory.RATING,
        TagCategory.ARTIST,
        TagCategory.CHARACTERS,
        TagCategory.COPYRIGHTS,
        TagCategory.QUALITY,
    )
    general_categories: tuple[TagCategory, ...] = (TagCategory.SPECIAL, TagCategory.GENERAL)
    has_quality: bool = False
    rating_map: tuple[tuple[str, str], ...] = ()
    quality_words: tuple[str, ...] = ()
    era_words: tuple[str, ...] = ()
    length_on_nl_tasks: bool = True
    tasks: frozenset[str] = V1_TASKS
    end_tokens: tuple[str, ...] = ("</s>", "<|endoftext|>", "<|eot_id|>", "<|im_end|>")
    strip_tokens: tuple[str, ...] = ("<s>", "<pad>", "<unk>", "<|begin_of_text|>", "<|startoftext|>")

    @property
    def field_keys(self) -> tuple[str, ...]:
        """Line keys a completion may contain, longest first (``aspect ratio`` before shorter keys)."""
        keys = {c.value for c in TagCategory} | {self.aspect_ratio_key, *_FIELD_KEYS}
        return tuple(sorted(keys, key=lambda k: (-len(k), k)))

    def meta_values(self, category: TagCategory, tags: Sequence[str]) -> list[str]:
        """A category's values as this model generation was trained to read them."""
        if category is TagCategory.RATING:
            return self.map_ratings(tags)
        if category is TagCategory.QUALITY:
            return self.order_quality(tags)
        return list(tags)

    def map_ratings(self, ratings: Iterable[str]) -> list[str]:
        """Rating tags in the model's words; without a mapping they pass through untouched."""
        if not self.rating_map:
            return list(ratings)
        mapping = dict(self.rating_map)
        out: list[str] = []
        for rating in ratings:
            mapped = mapping.get(rating.strip().lower(), rating.strip())
            for word in mapped.split(","):
                word = word.strip()
                if word and word not in out:
                    out.append(word)
        return out

    def order_quality(self, quality_tags: Iterable[str]) -> list[str]:
        """Quality words first (best first), then era words, then other quality tags as given."""
        tags = list(quality_tags)
        rank = {w: i for i, w in enumerate(self.quality_words + self.era_words)}
        if not rank:
            return tags
        known = sorted((t for t in tags if t.strip().lower() in rank), key=lambda t: rank[t.strip().lower()])
        return known + [t for t in tags if t.strip().lower() not in rank]

    def target_line(self, task: str | None, length: Length | str, gen_meta: bool = False) -> str:
        """Value of the ``target:`` line, e.g. ``<|long|> <|tag_to_long|>``.

        ``task`` None is a plain tag continuation. A task the model was not trained on is an error.
        """
        length = Length.parse(length)
        if task is not None and task not in self.tasks:
            known = ", ".join(sorted(self.tasks))
            raise ValueError(f"{self.name} was not trained on task {task!r}; known: {known}")
        touches_tags = task is None or task.startswith("tag_to") or "to_tag" in task
        parts = [f"<|{length.value}|>"] if touches_tags or self.length_on_nl_tasks else []
        if task is not None:
            parts.append(f"<|{task}|>")
        if gen_meta:
            parts.append("<|gen_meta|>")
        return " ".join(parts)


# v1 writes the user's rating and quality text exactly as the reference engine does.
TIPO_V1 = TipoDialect()

_V2_QUALITY = (
    "masterpiece",
    "best quality",
    "great quality",
    "good quality",
    "normal quality",
    "below average quality",
    "low quality",
    "worst quality",
)

TIPO_V2 = TipoDialect(
    name="tipo-v2",
    has_quality=True,
    quality_words=_V2_QUALITY,
    era_words=ERA_WORDS,
    length_on_nl_tasks=False,
    tasks=V2_TASKS,
)

TIPO_V2_1 = TipoDialect(
    name="tipo-v2.1",
    has_quality=True,
    rating_map=(
        ("general", "safe"),
        ("g", "safe"),
        ("safe", "safe"),
        ("sensitive", "sensitive"),
        ("s", "sensitive"),
        ("questionable", "nsfw"),
        ("q", "nsfw"),
        ("nsfw", "nsfw"),
        ("explicit", "nsfw, explicit"),
        ("e", "nsfw, explicit"),
    ),
    quality_words=_V2_QUALITY,
    era_words=ERA_WORDS,
    length_on_nl_tasks=False,
    tasks=V2_TASKS,
)

DIALECTS = {d.name: d for d in (TIPO_V1, TIPO_V2, TIPO_V2_1)}


def dialect_named(name: str) -> TipoDialect:
    """The dialect a model registry entry names (``kgen.models.registry.ModelSpec.dialect``)."""
    try:
        return DIALECTS[name]
    except KeyError:
        raise ValueError(f"unknown TIPO dialect {name!r}; known: {', '.join(DIALECTS)}") from None
