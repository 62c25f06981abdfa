"""The upsampling pipeline: a request in, the generation steps against a backend, the final prompt out.

Backend-agnostic: it talks to any :class:`kgen.generation.Backend`. For TIPO it runs the planned
tasks (``kgen.protocol.tipo.plan_tasks``) in order, each one retried until its length target is met, each
task's result feeding the next; for DanTagGen models it runs ``kgen.protocol.dtg.generate_tags``.

Guarantees (tested in tests/test_pipeline.py and tests/test_properties.py):

* the user's tags and sentences are never lost, never banned, never reordered;
* new content is deduplicated, filtered by the ban list, shuffled with ``random.Random(seed)`` and
  capped: tags by the tag-length bound, sentences by the NL-length bound;
* attempt ``i`` of a task samples with seed ``seed + i``; a task makes at most
  ``RetryPolicy.max_attempts`` attempts and stops after ``max_stalls`` attempts in a row that add nothing;
* only accepted content (plausible, non-banned, new) is fed back into the next model input; a completion
  that is mostly garbage contributes nothing;
* no model input exceeds ``backend.context_length`` minus the tokens reserved for generation: fed-back
  content is trimmed first; when the user's own text alone does not fit, ``max_new_tokens`` shrinks to
  the room left, and when even ``RetryPolicy.min_new_tokens`` do not fit, :class:`PromptTooLongError`.

A request is run as a generator that yields :class:`GenerationCall` and receives the
:class:`Completion`; :func:`upsample` drives one, :func:`upsample_many` drives several in lockstep so
that each round of generation steps goes to the backend as one batch.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .generation import AttemptTotals, Backend, Completion, SamplingSettings
from .protocol import dtg, formats, tipo
from .protocol.formats import PromptFields
from .protocol.lengths import TIPO_NL_BOUNDS, TIPO_TAG_BOUNDS, Length
from .protocol.postprocess import (
    BanList,
    join_sentences,
    merge_sentences,
    merge_tags,
    split_sentences,
    split_tags,
    tag_key,
)
from .protocol.tags import TagCategory, TagMap, classify, classify_tag

DEFAULT_FORMAT = formats.DEFAULT_FORMAT
SEED_LIMIT = 2**32  # backends get seeds in [0, 2**32)


class RequestError(ValueError):
    """A request that cannot be run; the message names the field and the problem."""


class PromptTooLongError(ValueError):
    """The model input cannot fit the backend's context window even without fed-back content."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard each TIPO task tries to reach its length target (the reference allows 11 attempts)."""

    max_attempts: int = 11
    max_stalls: int = 3  # attempts in a row that add nothing end the task
    min_new_tokens: int = 64  # least generation room worth a call when the prompt alone is long

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.max_stalls < 1:
            raise ValueError("max_stalls must be >= 1")
        if self.min_new_tokens < 1:
            raise ValueError("min_new_tokens must be >= 1")


# ------------------------------------------------------------------------------------------- request


@dataclass
class UpsampleRequest:
    """One prompt to upsample.

    ``tags``: a comma-separated string or a list. ``nl``: the natural-language caption. Lengths accept
    ``Length`` or text (``"very short"``, ``"very_short"``). ``seed`` None or negative draws a random
    seed (reported in the result). ``ban_tags``: comma-separated string or list of ban rules (plain
    text or regex, see ``kgen.protocol.postprocess``). ``format``: a preset name of
    ``kgen.protocol.formats`` or a
    template with ``<|general|>``-style placeholders. ``extra_nl``: also generate a caption from the
    tags; None decides from the format like the reference extension (the format shows
    ``<|generated|>``, or ``<|extended|>`` without a user caption). ``no_formatting``: the final prompt
    is the user's text with the new content appended, instead of the formatted one.
    """

    tags: str | Sequence[str] = ""
    nl: str = ""
    tag_length: Length | str = Length.LONG
    nl_length: Length | str = Length.LONG
    aspect_ratio: float | None = 1.0
    seed: int | None = 0
    ban_tags: str | Sequence[str] = ""
    format: str = DEFAULT_FORMAT
    expand_tags: bool = True
    expand_nl: bool = True
    tag_first: bool = True
    extra_nl: bool | None = None
    no_formatting: bool = False
    add_quality: bool = True
    # Derived in __post_init__:
    tag_list: list[str] = field(init=False, repr=False)  # the tags, split and stripped
    bans: BanList = field(init=False, repr=False)  # compiled ban rules
    template: str = field(init=False, repr=False)  # the format template the preset name stands for

    def __post_init__(self) -> None:
        if isinstance(self.tags, str):
            self.tag_list = split_tags(self.tags)
        elif isinstance(self.tags, Iterable):
            items = list(self.tags)
            bad = [t for t in items if not isinstance(t, str)]
            if bad:
                raise RequestError(f"tags must be strings, got {bad[0]!r}")
            self.tag_list = split_tags(items)
        else:
            raise RequestError(f"tags must be a comma-separated string or a list, not {self.tags!r}")
        if self.nl is None:
            self.nl = ""
        if not isinstance(self.nl, str):
            raise RequestError(f"nl must be a string, not {type(self.nl).__name__}")
        try:
            self.tag_length = Length.parse(self.tag_length, Length.LONG)
        except ValueError as exc:
            raise RequestError(f"tag_length: {exc}") from None
        try:
            self.nl_length = Length.parse(self.nl_length, Length.LONG)
        except ValueError as exc:
            raise RequestError(f"nl_length: {exc}") from None
        for name in ("expand_tags", "expand_nl", "tag_first", "no_formatting", "add_quality"):
            if not isinstance(getattr(self, name), bool):
                raise RequestError(f"{name} must be true or false, not {getattr(self, name)!r}")
        if self.extra_nl is not None and not isinstance(self.extra_nl, bool):
            raise RequestError(f"extra_nl must be true, false or None (by format), not {self.extra_nl!r}")
        if isinstance(self.aspect_ratio, str):
            try:
                self.aspect_ratio = float(self.aspect_ratio)
            except ValueError:
                raise RequestError(f"aspect_ratio must be a number, not {self.aspect_ratio!r}") from None
        if self.aspect_ratio is not None:
            ratio = self.aspect_ratio
            is_number = isinstance(ratio, (int, float)) and not isinstance(ratio, bool)
            if not is_number or not math.isfinite(ratio) or ratio <= 0:
                raise RequestError(f"aspect_ratio must be a positive number (width / height), not {ratio!r}")
            self.aspect_ratio = float(ratio)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise RequestError(f"seed must be an integer, not {self.seed!r}")
        if self.seed is None or self.seed < 0:
            self.seed = random.SystemRandom().randrange(2**31 - 1)
        self.bans = BanList.parse(self.ban_tags)  # raises BanTagError naming a bad rule
        if not isinstance(self.format, str):
            raise RequestError(f"format must be a preset name or a template string, not {self.format!r}")
        self.template = _resolve_template(self.format)

    @property
    def tags_text(self) -> str:
        """The tags as the user typed them (a list is joined with ``, ``)."""
        return self.tags if isinstance(self.tags, str) else ", ".join(self.tag_list)

    @property
    def wants_extra_nl(self) -> bool:
        if self.extra_nl is not None:
            return bool(self.extra_nl)
        return tipo.wants_extra_nl(self.nl, self.template)


def _resolve_template(name_or_template: str) -> str:
    try:
        return formats.resolve_template(name_or_template)
    except ValueError as exc:
        raise RequestError(f"format: {exc}") from None


# ------------------------------------------------------------------------------------------- result


@dataclass(frozen=True)
class GenerationCall:
    """One model input a pipeline step needs generated."""

    prompt: str
    settings: SamplingSettings
    seed: int


@dataclass(frozen=True)
class Attempt:
    """One generation pass and what came of it."""

    task: str
    attempt: int
    seed: int
    prompt: str
    completion: Completion
    added_tags: tuple[str, ...] = ()
    added_sentences: tuple[str, ...] = ()
    rejected: bool = False  # the completion was judged garbage and nothing was taken from it
    trimmed: bool = False  # fed-back content was left out of the prompt to fit the context window


@dataclass
class UpsampleResult(AttemptTotals):
    """The final fields, the final prompt and how they were made.

    ``tags``: every category, the user's tags first then new ones. ``extended``: the user's caption
    with its extension; ``generated``: a caption generated from the tags. ``new_tags`` / ``new_nl``:
    only what the model added (for "no formatting"). ``prompt`` is the final prompt: ``formatted``
    unless the request asked for no formatting, then ``appended``.
    """

    tags: TagMap
    extended: str
    generated: str
    new_tags: list[str]
    new_nl: str
    prompt: str
    formatted: str
    appended: str
    seed: int
    protocol: str
    attempts: list[Attempt] = field(default_factory=list)
    banned: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def generate_passes(self) -> int:
        return len(self.attempts)

    def fields(self) -> dict[str, Any]:
        """Category lists plus ``extended`` / ``generated`` text: what a format template shows."""
        out: dict[str, Any] = {c.value: list(self.tags.get(c)) for c in TagCategory}
        out["extended"] = self.extended
        out["generated"] = self.generated
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (``--json``)."""
        return {
            **self.fields(),
            "new_tags": list(self.new_tags),
            "new_nl": self.new_nl,
            "prompt": self.prompt,
            "seed": self.seed,
            "protocol": self.protocol,
            "banned": list(self.banned),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "generate_passes": self.generate_passes,
            "seconds": round(self.seconds, 4),
            "model_inputs": self.model_inputs,
        }


# ------------------------------------------------------------------------------------------- model choice


def _protocol(model: Any) -> str:
    if model is None:
        return "tipo"
    protocol = getattr(model, "protocol", None)
    if protocol not in ("tipo", "tipo2", "dtg"):
        raise RequestError(f"model must be a kgen.models.registry.ModelSpec or None, not {model!r}")
    return protocol


def _tipo_dialect(model: Any) -> tipo.TipoDialect:
    """The prompt dialect ``kgen.protocol.tipo`` should use for a model spec (TIPO v1 without one)."""
    dialect = getattr(model, "dialect", None)
    if isinstance(dialect, tipo.TipoDialect):
        return dialect
    known = getattr(tipo, "DIALECTS", {})
    name = getattr(dialect, "name", None)
    if name in known:
        return known[name]
    return tipo.TIPO_V1


def _has_quality(model: Any) -> bool:
    return bool(getattr(model, "has_quality", False))


def _tipo_request(request: UpsampleRequest, user_tags: TagMap) -> tipo.TipoRequest:
    return tipo.TipoRequest(
        tags=user_tags,
        nl=request.nl,
        tag_length=request.tag_length,
        nl_length=request.nl_length,
        expand_tags=request.expand_tags,
        expand_nl=request.expand_nl,
        tag_first=request.tag_first,
        extra_nl=request.wants_extra_nl,
        aspect_ratio=request.aspect_ratio,
        add_quality=request.add_quality,
    )


def first_model_input(request: UpsampleRequest, model: Any = None) -> str:
    """The model input of the first generation step (``--dry-run``); "" when nothing is generated.

    Needs no backend and imports no torch.
    """
    user_tags = classify(request.tag_list)
    if _protocol(model) == "dtg":
        return dtg.build_prompt(
            user_tags, request.tag_length, request.aspect_ratio or 1.0, with_quality=_has_quality(model)
        )
    prompt = tipo.first_prompt(_tipo_request(request, user_tags), _tipo_dialect(model))
    return prompt or ""


# ------------------------------------------------------------------------------------------- TIPO


@dataclass
class _TipoState:
    """What the request has so far; user content first, never removed."""

    user_tags: TagMap
    user_general: str  # the user's ``tag:`` line content
    user_keys: set[str]
    user_general_count: int
    user_nl: str
    user_sentences: list[str]
    new_tags: list[str] = field(default_factory=list)
    extended: list[str] = field(default_factory=list)
    generated: list[str] = field(default_factory=list)
    banned: list[str] = field(default_factory=list)

    def bucket(self, name: str) -> list[str]:
        return self.extended if name == "extended" else self.generated

    def caption_bucket(self, field_name: str) -> str:
        """Where the caption written into a task's caption field lives."""
        if self.extended:
            return "extended"
        if self.generated:
            return "generated"
        return "extended" if field_name == tipo.SHORT_FIELD else "generated"

    def new_sentences(self, bucket: str) -> list[str]:
        sentences = self.bucket(bucket)
        return sentences[len(self.user_sentences) :] if bucket == "extended" else list(sentences)

    def fixed_sentences(self, bucket: str) -> list[str]:
        return self.extended[: len(self.user_sentences)] if bucket == "extended" else []

    def caption_text(self, bucket: str, keep_new: int | None = None) -> str:
        if bucket == "extended" and self.extended == self.user_sentences:
            return self.user_nl  # untouched: exactly what the user typed
        new = self.new_sentences(bucket)
        if keep_new is not None:
            new = new[:keep_new]
        return join_sentences(self.fixed_sentences(bucket) + new)

    def tag_line(self, keep_new: int | None = None) -> str:
        new = self.new_tags if keep_new is None else self.new_tags[:keep_new]
        return ", ".join(part for part in (self.user_general, ", ".join(new)) if part)


def _sentence_target(request: UpsampleRequest) -> tuple[int, int]:
    bounds = TIPO_NL_BOUNDS[request.nl_length]
    return bounds.minimum, bounds.maximum


def _tag_target(request: UpsampleRequest) -> tuple[int, int]:
    bounds = TIPO_TAG_BOUNDS[request.tag_length]
    return bounds.minimum, bounds.maximum


def _output_bucket(state: _TipoState, task: tipo.TipoTask, field_name: str) -> str:
    if field_name == task.caption_field:
        return state.caption_bucket(field_name)
    return "extended" if field_name == tipo.SHORT_FIELD else "generated"


def _task_met(state: _TipoState, task: tipo.TipoTask, request: UpsampleRequest) -> bool:
    out = task.output_field
    if out == tipo.TAG_FIELD:
        return state.user_general_count + len(state.new_tags) >= _tag_target(request)[0]
    return len(state.bucket(_output_bucket(state, task, out))) >= _sentence_target(request)[0]


def _feedable(task: tipo.TipoTask) -> bool:
    """Whether a retry can continue the task's output (it sits in a field the prompt can hold)."""
    return task.output_field in (tipo.TAG_FIELD, task.caption_field)


def _attempt_task(state: _TipoState, task: tipo.TipoTask) -> tipo.TipoTask:
    """On a retry, a task whose output already has content continues it instead of starting over."""
    if task.expand or not _feedable(task):
        return task
    if task.output_field == tipo.TAG_FIELD:
        has_content = bool(state.new_tags or state.user_general)
    else:
        has_content = bool(state.bucket(state.caption_bucket(task.caption_field)))
    return tipo.TipoTask(task.mode, task.length, True) if has_content else task


@dataclass
class _TipoRun:
    request: UpsampleRequest
    backend: Backend
    sampling: SamplingSettings
    policy: RetryPolicy
    dialect: tipo.TipoDialect
    meta: list
    state: _TipoState
    rng: random.Random
    attempts: list[Attempt] = field(default_factory=list)

    # -- prompt building with the context guard --------------------------------------------------

    def _build(
        self, task: tipo.TipoTask, gen_meta: bool, keep_tags: int | None, keep_sentences: int | None
    ) -> str:
        bucket = self.state.caption_bucket(task.caption_field)
        return tipo.build_prompt(
            self.meta,
            self.state.tag_line(keep_tags),
            self.state.caption_text(bucket, keep_sentences),
            task,
            gen_meta,
            self.dialect,
        )

    def _fits(self, prompt: str, reserve: int) -> bool:
        return self.backend.count_tokens(prompt) + reserve <= self.backend.context_length

    def fit_prompt(self, task: tipo.TipoTask, gen_meta: bool) -> tuple[str, SamplingSettings, bool]:
        """The model input with as much fed-back content as fits, and the settings to generate with."""
        reserve = self.sampling.max_new_tokens
        prompt = self._build(task, gen_meta, None, None)
        if self._fits(prompt, reserve):
            return prompt, self.sampling, False
        bucket = self.state.caption_bucket(task.caption_field)
        n_sentences = len(self.state.new_sentences(bucket))
        n_tags = len(self.state.new_tags)

        def fits(keep_tags: int | None, keep_sentences: int) -> bool:
            return self._fits(self._build(task, gen_meta, keep_tags, keep_sentences), reserve)

        # Leave out the newest fed-back sentences first, then the newest fed-back tags.
        keep_s = _largest_fitting(n_sentences, lambda k: fits(None, k))
        if keep_s is not None:
            return self._build(task, gen_meta, None, keep_s), self.sampling, True
        keep_t = _largest_fitting(n_tags, lambda k: fits(k, 0))
        if keep_t is not None:
            return self._build(task, gen_meta, keep_t, 0), self.sampling, True
        bare = self._build(task, gen_meta, 0, 0)
        room = self.backend.context_length - self.backend.count_tokens(bare)
        needed = min(self.policy.min_new_tokens, self.sampling.max_new_tokens)
        if room >= needed:
            return bare, replace(self.sampling, max_new_tokens=room), n_tags + n_sentences > 0
        raise PromptTooLongError(
            f"the model input needs {self.backend.count_tokens(bare)} tokens but the context window of "
            f"{self.backend.name} is {self.backend.context_length} tokens and at least {needed} must stay "
            f"free for generation; shorten the tags or the caption"
        )

    # -- one attempt -----------------------------------------------------------------------------

    def absorb(
        self, task: tipo.TipoTask, prompt: str, completion: Completion, fresh_best: bool
    ) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
        """Merge an attempt's content into the state. Returns (added tags, added sentences, rejected)."""
        request, state = self.request, self.state
        # A completion that reached an end token ended on its own, whatever the backend reports.
        ended = any(token in completion.text for token in self.dialect.end_tokens)
        truncated = not completion.finished and not ended
        parsed = tipo.parse_output(prompt + completion.text, truncated=truncated, dialect=self.dialect)
        staged_tags: list[str] = []
        staged_nl: dict[str, list[str]] = {}
        implausible = 0
        banned: list[str] = []
        for field_name in task.fields:
            if field_name == tipo.TAG_FIELD:
                candidates = parsed.tag_list
                prompt_tags = _prompt_tag_count(prompt)
                # Items of the prompt's own tag line (the last one possibly glued to the continuation)
                # are never new content.
                candidates = _canonical(candidates[prompt_tags:])
                high = _tag_target(request)[1]
                room = high - state.user_general_count - len(state.new_tags)
                existing = [*state.user_keys, *state.new_tags]
                merged = merge_tags(existing, candidates, room=room, bans=request.bans, rng=self.rng)
                staged_tags = merged.added
                implausible += len(merged.implausible)
                banned += merged.banned
            else:
                text = parsed.extended if field_name == tipo.SHORT_FIELD else parsed.generated
                bucket = _output_bucket(state, task, field_name)
                high = _sentence_target(request)[1]
                if fresh_best and field_name == task.output_field:
                    # A from-scratch caption replaces the previous attempt's only when it is longer.
                    merged_s = merge_sentences(
                        [], split_sentences(text), room=high, rng=self.rng, shuffle=bucket == "extended"
                    )
                    if len(merged_s.sentences) > len(state.bucket(bucket)):
                        staged_nl[bucket] = merged_s.sentences
                    implausible += len(merged_s.implausible)
                    continue
                current = staged_nl.get(bucket, state.bucket(bucket))
                room = high - len(current)
                # As the reference: new sentences of the extended caption are shuffled, generated ones not.
                merged_s = merge_sentences(
                    current, split_sentences(text), room=room, rng=self.rng, shuffle=bucket == "extended"
                )
                implausible += len(merged_s.implausible)
                if merged_s.sentences != current:
                    staged_nl[bucket] = merged_s.sentences
        added_sentences: list[str] = []
        for bucket, sentences in staged_nl.items():
            before = {s for s in state.bucket(bucket)}
            added_sentences += [s for s in sentences if s not in before]
        accepted = len(staged_tags) + len(added_sentences)
        if implausible > accepted:
            return (), (), True  # mostly garbage: take nothing from it
        state.new_tags.extend(staged_tags)
        state.banned.extend(t for t in banned if t not in state.banned)
        for bucket, sentences in staged_nl.items():
            if bucket == "extended":
                state.extended[:] = _keep_user_sentences(state.user_sentences, sentences)
            else:
                state.generated[:] = sentences
        return tuple(staged_tags), tuple(added_sentences), False

    def run_task(self, task: tipo.TipoTask, gen_meta: bool) -> Generator[GenerationCall, Completion, None]:
        stalls = 0
        fresh_best = not _feedable(task)
        for attempt in range(self.policy.max_attempts):
            attempt_task = _attempt_task(self.state, task) if attempt else task
            prompt, settings, trimmed = self.fit_prompt(attempt_task, gen_meta)
            seed = (self.request.seed + attempt) % SEED_LIMIT
            completion = yield GenerationCall(prompt, settings, seed)
            added_tags, added_sentences, rejected = self.absorb(attempt_task, prompt, completion, fresh_best)
            record = Attempt(
                str(task), attempt, seed, prompt, completion, added_tags, added_sentences, rejected, trimmed
            )
            self.attempts.append(record)
            if _task_met(self.state, task, self.request):
                return
            stalls = 0 if (added_tags or added_sentences) else stalls + 1
            if stalls >= self.policy.max_stalls:
                return


def _canonical(tags: Iterable[str]) -> list[str]:
    """Generated tags spelled as the tag lists spell them (``long_hair`` -> ``long hair``)."""
    out = []
    for tag in tags:
        classified = classify_tag(tag)
        out.append(classified.name if classified is not None else tag)
    return out


def _keep_user_sentences(user: list[str], sentences: list[str]) -> list[str]:
    """Belt and braces: every user sentence survives, verbatim or inside its continuation."""
    out = list(sentences)
    for i, sentence in enumerate(user):
        if i < len(out) and sentence.lower() in out[i].lower():
            continue
        out.insert(min(i, len(out)), sentence)
    return out


def _prompt_tag_count(prompt: str) -> int:
    """How many tags the prompt's own ``tag:`` line holds (0 when it has none)."""
    for line in prompt.split("\n"):
        if line.startswith(f"{tipo.TAG_FIELD}:"):
            return len(split_tags(line[len(tipo.TAG_FIELD) + 1 :]))
    return 0


def _largest_fitting(n: int, fits) -> int | None:
    """Largest k in [0, n) such that fits(k) (monotone), or None when even 0 does not fit."""
    if n == 0 or not fits(0):
        return None
    low, high = 0, n - 1  # fits(low) holds; fits(n) is known to fail
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low


def _user_state(request: UpsampleRequest, user_tags: TagMap, dialect: tipo.TipoDialect) -> _TipoState:
    general = tipo.general_text(user_tags, dialect)
    sentences = split_sentences(request.nl)
    return _TipoState(
        user_tags=user_tags,
        user_general=general,
        user_keys={tag_key(t) for c in TagCategory for t in user_tags.get(c)},
        user_general_count=len(split_tags(general)),
        user_nl=request.nl,
        user_sentences=sentences,
        extended=list(sentences),
    )


def _tipo_steps(
    request: UpsampleRequest, backend: Backend, model: Any, sampling: SamplingSettings, policy: RetryPolicy
) -> Generator[GenerationCall, Completion, UpsampleResult]:
    started = time.perf_counter()
    dialect = _tipo_dialect(model)
    user_tags = classify(request.tag_list)
    tipo_request = _tipo_request(request, user_tags)
    tasks = tipo_request.plan(dialect)
    run = _TipoRun(
        request=request,
        backend=backend,
        sampling=sampling,
        policy=policy,
        dialect=dialect,
        meta=tipo_request.meta(dialect),
        state=_user_state(request, user_tags, dialect),
        rng=random.Random(request.seed),
    )
    for task in tasks:
        yield from run.run_task(task, gen_meta=False)
    state = run.state
    return _finish(
        request,
        user_tags,
        classify(state.new_tags),
        state.new_tags,
        state.extended,
        state.generated,
        state.user_sentences,
        protocol=_protocol(model),
        attempts=run.attempts,
        banned=state.banned,
        seconds=time.perf_counter() - started,
    )


# ------------------------------------------------------------------------------------------- DanTagGen


def _dtg_steps(
    request: UpsampleRequest, backend: Backend, model: Any, sampling: SamplingSettings, policy: RetryPolicy
) -> Generator[GenerationCall, Completion, UpsampleResult]:
    """DanTagGen: ``kgen.protocol.dtg.generate_tags`` runs the loop; its first generation step is
    yielded (so a
    batch sends it together with the other requests' first steps) and handed back to the loop."""
    del policy  # the DanTagGen loop keeps its own bounds (kgen.protocol.dtg)
    started = time.perf_counter()
    user_tags = classify(request.tag_list)
    aspect_ratio = request.aspect_ratio or 1.0
    with_quality = _has_quality(model)
    prefetched = None
    if len(user_tags.special) + len(user_tags.general) < dtg.DTG_TAG_TARGET[request.tag_length]:
        prompt = dtg.build_prompt(user_tags, request.tag_length, aspect_ratio, with_quality=with_quality)
        room = backend.context_length - backend.count_tokens(prompt)
        if room >= min(dtg.MIN_NEW_TOKENS, sampling.max_new_tokens):
            settings = replace(sampling, max_new_tokens=min(sampling.max_new_tokens, room))
            call = GenerationCall(prompt, settings, request.seed % SEED_LIMIT)
            prefetched = (call, (yield call))
    try:
        result = dtg.generate_tags(
            _PrefetchedBackend(backend, prefetched),
            user_tags,
            length=request.tag_length,
            aspect_ratio=aspect_ratio,
            seed=request.seed % SEED_LIMIT,
            with_quality=with_quality,
            ban=request.bans,
            settings=sampling,
        )
    except dtg.PromptTooLongError as exc:
        raise PromptTooLongError(str(exc)) from None
    attempts = [
        Attempt("dtg", i, a.seed, a.prompt, a.completion, a.new_tags) for i, a in enumerate(result.attempts)
    ]
    new_tags = _canonical(result.new_tags)
    sentences = split_sentences(request.nl)
    return _finish(
        request,
        user_tags,
        classify(new_tags),
        new_tags,
        sentences,
        [],
        sentences,
        protocol="dtg",
        attempts=attempts,
        banned=[],
        seconds=time.perf_counter() - started,
    )


class _PrefetchedBackend:
    """Wraps a backend; answers one already generated call from memory, everything else from the backend."""

    def __init__(self, backend: Backend, prefetched: tuple[GenerationCall, Completion] | None) -> None:
        self._backend = backend
        self._prefetched = prefetched
        self.name = backend.name
        self.context_length = backend.context_length

    def count_tokens(self, text: str) -> int:
        return self._backend.count_tokens(text)

    def generate(
        self, prompts: Sequence[str], settings: SamplingSettings, seeds: Sequence[int]
    ) -> list[Completion]:
        if self._prefetched is not None:
            call, completion = self._prefetched
            self._prefetched = None
            if list(prompts) == [call.prompt] and list(seeds) == [call.seed] and settings == call.settings:
                return [completion]
        return self._backend.generate(prompts, settings, seeds)


# ------------------------------------------------------------------------------------------- assembly


def _merge_maps(user: TagMap, new: TagMap) -> TagMap:
    merged = TagMap()
    for category in TagCategory:
        merged.get(category).extend(user.get(category))
        merged.get(category).extend(new.get(category))
    return merged


def _finish(
    request: UpsampleRequest,
    user_tags: TagMap,
    new_map: TagMap,
    new_tags: list[str],
    extended: list[str],
    generated: list[str],
    user_sentences: list[str],
    *,
    protocol: str,
    attempts: list[Attempt],
    banned: list[str],
    seconds: float,
) -> UpsampleResult:
    tags = _merge_maps(user_tags, new_map)
    extended_text = join_sentences(extended)
    generated_text = join_sentences(generated)
    addition = _caption_addition(request, extended, user_sentences, generated)
    fields = PromptFields.from_tag_map(tags, extended_text, generated_text)
    formatted = formats.apply_format(fields, request.template)
    appended = _appended_prompt(request, new_tags, addition)
    return UpsampleResult(
        tags=tags,
        extended=extended_text,
        generated=generated_text,
        new_tags=list(new_tags),
        new_nl=addition.text,
        prompt=appended if request.no_formatting else formatted,
        formatted=formatted,
        appended=appended,
        seed=int(request.seed),
        protocol=protocol,
        attempts=attempts,
        banned=list(banned),
        seconds=seconds,
    )


@dataclass(frozen=True)
class _CaptionAddition:
    """What the model added after the user's caption: the rest of an unfinished last sentence, then
    whole new sentences (or, without a user caption, the generated caption)."""

    continuation: str
    sentences: list[str]

    @property
    def text(self) -> str:
        parts = [p for p in (self.continuation.strip(), *self.sentences) if p]
        joined = join_sentences(parts)
        return f"{joined}." if joined else ""

    def after(self, caption: str) -> str:
        """``caption`` (the user's text as typed) followed by this addition."""
        text = caption.rstrip()
        if self.continuation.strip():
            lead = "" if self.continuation[:1].isspace() or self.continuation[:1] in ",;:" else " "
            text += lead + self.continuation.rstrip()
        if self.sentences:
            if text and not text.endswith((".", "!", "?", "。", "！", "？")):
                text += "."
            text = f"{text} {join_sentences(self.sentences)}.".strip()
        elif text and self.continuation.strip():
            text += "."
        return text


def _caption_addition(
    request: UpsampleRequest, extended: list[str], user_sentences: list[str], generated: list[str]
) -> _CaptionAddition:
    if not user_sentences:
        return _CaptionAddition("", list(extended) or (list(generated) if not request.nl.strip() else []))
    last = len(user_sentences) - 1
    continuation = ""
    if last < len(extended) and extended[last] != user_sentences[last]:
        continued = extended[last]
        if continued.startswith(user_sentences[last]):
            continuation = continued[len(user_sentences[last]) :]
    return _CaptionAddition(continuation, list(extended[len(user_sentences) :]))


def _appended_prompt(request: UpsampleRequest, new_tags: list[str], addition: _CaptionAddition) -> str:
    """The "no formatting" prompt: the user's tags as typed plus the new tags, then the caption: the user's
    caption as typed plus what the model added (or the generated caption when the user gave none)."""
    caption = addition.after(request.nl) if request.nl.strip() else addition.text
    return formats.append_new_content(request.tags_text, new_tags, caption)


# ------------------------------------------------------------------------------------------- drivers


def _steps(
    request: UpsampleRequest,
    backend: Backend,
    model: Any,
    sampling: SamplingSettings | None,
    policy: RetryPolicy,
) -> Generator[GenerationCall, Completion, UpsampleResult]:
    if not isinstance(request, UpsampleRequest):
        raise RequestError(f"expected an UpsampleRequest, got {type(request).__name__}")
    if _protocol(model) == "dtg":
        return _dtg_steps(request, backend, model, sampling or dtg.DTG_SAMPLING, policy)
    return _tipo_steps(request, backend, model, sampling or SamplingSettings(), policy)


def upsample(
    request: UpsampleRequest,
    backend: Backend,
    model: Any = None,
    sampling: SamplingSettings | None = None,
    policy: RetryPolicy | None = None,
) -> UpsampleResult:
    """Run one request against ``backend``. ``model`` is the
    ``kgen.models.registry.ModelSpec`` (None: TIPO v1);
    ``sampling`` None uses the protocol's defaults."""
    steps = _steps(request, backend, model, sampling, policy or RetryPolicy())
    try:
        call = next(steps)
        while True:
            completion = backend.generate([call.prompt], call.settings, [call.seed])[0]
            call = steps.send(completion)
    except StopIteration as done:
        return done.value


def upsample_many(
    requests: Sequence[UpsampleRequest],
    backend: Backend,
    model: Any = None,
    sampling: SamplingSettings | None = None,
    policy: RetryPolicy | None = None,
    *,
    return_exceptions: bool = False,
) -> list[UpsampleResult | Exception]:
    """Run several requests in lockstep: each round, the pending model inputs of all requests that share
    sampling settings go to ``backend.generate`` as one batch. Results keep the request order.

    ``return_exceptions``: a request that fails (e.g. :class:`PromptTooLongError`) gives its exception in
    its slot instead of aborting the batch.
    """
    lockstep = _Lockstep(len(requests), return_exceptions)
    policy = policy or RetryPolicy()
    for index, request in enumerate(requests):
        lockstep.start(index, lambda r=request: _steps(r, backend, model, sampling, policy))
    return lockstep.run(backend)


# A variant sampler continues one model input ``n`` times: (prompt, n, settings, seed) -> n completions.
VariantSampler = Callable[[str, int, SamplingSettings, int], list[Completion]]


def independent_variants(backend: Backend) -> VariantSampler:
    """The baseline variant sampler: ``n`` independent samples, seeds ``seed .. seed + n - 1``, one batch."""

    def sample(prompt: str, n: int, settings: SamplingSettings, seed: int) -> list[Completion]:
        return backend.generate([prompt] * n, settings, [(seed + i) % SEED_LIMIT for i in range(n)])

    return sample


def upsample_variants(
    request: UpsampleRequest,
    backend: Backend,
    n: int,
    model: Any = None,
    sampling: SamplingSettings | None = None,
    policy: RetryPolicy | None = None,
    *,
    sampler: VariantSampler | None = None,
) -> list[UpsampleResult]:
    """``n`` different results for one request (one per image of a batch).

    Variant ``i`` is the request with seed ``seed + i``, so variant 0 equals :func:`upsample` of the request
    when ``sampler`` is the independent one. The first model input is the same for every variant: it goes
    once to ``sampler`` (e.g. TGTS, which shares the computation of common prefixes) for ``n`` completions;
    each variant then runs its own retries and later tasks, batched in lockstep.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise RequestError(f"the number of variants must be a positive integer, not {n!r}")
    policy = policy or RetryPolicy()
    sampler = sampler or independent_variants(backend)
    lockstep = _Lockstep(n, return_exceptions=False)
    for i in range(n):
        variant = replace(request, seed=(request.seed + i) % SEED_LIMIT)
        lockstep.start(i, lambda r=variant: _steps(r, backend, model, sampling, policy))
    first = {index: call for index, (_, call) in lockstep.pending.items()}
    prompts = {(call.prompt, call.settings) for call in first.values()}
    if len(first) == n and len(prompts) == 1:
        call = first[0]
        completions = sampler(call.prompt, n, call.settings, call.seed)
        if len(completions) != n:
            raise RuntimeError(f"the variant sampler returned {len(completions)} completions for {n}")
        for index, completion in enumerate(completions):
            lockstep.advance(index, completion)
    return lockstep.run(backend)  # type: ignore[return-value]


class _Lockstep:
    """Drives request step generators together, batching each round's model inputs per sampling settings."""

    def __init__(self, size: int, return_exceptions: bool) -> None:
        self.results: list[UpsampleResult | Exception | None] = [None] * size
        self.pending: dict[int, tuple[Generator, GenerationCall]] = {}
        self.return_exceptions = return_exceptions

    def _fail(self, index: int, exc: Exception) -> None:
        self.pending.pop(index, None)
        if not self.return_exceptions:
            raise exc
        self.results[index] = exc

    def start(self, index: int, make_steps: Callable[[], Generator]) -> None:
        try:
            steps = make_steps()
            self.pending[index] = (steps, next(steps))
        except StopIteration as done:
            self.results[index] = done.value
        except Exception as exc:
            self._fail(index, exc)

    def advance(self, index: int, completion: Completion) -> None:
        steps = self.pending[index][0]
        try:
            self.pending[index] = (steps, steps.send(completion))
        except StopIteration as done:
            self.results[index] = done.value
            self.pending.pop(index, None)
        except Exception as exc:
            self._fail(index, exc)

    def run(self, backend: Backend) -> list[UpsampleResult | Exception]:
        while self.pending:
            groups: dict[SamplingSettings, list[int]] = {}
            for index, (_, call) in self.pending.items():
                groups.setdefault(call.settings, []).append(index)
            for settings, indices in groups.items():
                calls = [self.pending[i][1] for i in indices]
                completions = backend.generate([c.prompt for c in calls], settings, [c.seed for c in calls])
                for index, completion in zip(indices, completions, strict=True):
                    self.advance(index, completion)
        return self.results  # type: ignore[return-value]
