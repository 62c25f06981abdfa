"""TIPO as protocol steps: the planned tasks of a request, each retried until its length target is met.

A step generator (:func:`tipo_steps`) yields :class:`kgen.protocol.request.GenerationCall` and receives
the :class:`kgen.generation.Completion`; it never sees a backend, only the model's
:class:`kgen.protocol.budget.TokenBudget`. The planned tasks (``kgen.protocol.tipo.plan_tasks``) run in
order, each task's result feeding the next.

Guarantees (tested in tests/test_pipeline.py and tests/test_properties.py):

* the user's tags and sentences are never lost, never banned, never reordered;
* new content is deduplicated, filtered by the ban list, shuffled with ``random.Random(seed)`` and
  capped: tags by the tag-length bound, sentences by the NL-length bound;
* attempt ``i`` of a task samples with seed ``seed + i``; a task makes at most
  ``RetryPolicy.max_attempts`` attempts and stops after ``max_stalls`` attempts in a row that add nothing;
* only accepted content (plausible, non-banned, new) is fed back into the next model input; a completion
  that is mostly garbage contributes nothing;
* no model input exceeds the context length minus the tokens reserved for generation: fed-back
  content is trimmed first; when the user's own text alone does not fit, ``max_new_tokens`` shrinks to
  the room left, and when even ``RetryPolicy.min_new_tokens`` do not fit,
  :class:`kgen.protocol.budget.PromptTooLongError`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Generator
from dataclasses import dataclass, field

from ..generation import Completion, SamplingSettings
from . import tipo
from .assembly import GeneratedContent, assemble, canonical_tags
from .budget import FittedPrompt, TokenBudget, TrimRule, fit_prompt
from .lengths import TIPO_NL_BOUNDS, TIPO_TAG_BOUNDS
from .postprocess import join_sentences, merge_sentences, merge_tags, split_sentences, split_tags, tag_key
from .request import SEED_LIMIT, Attempt, GenerationCall, RetryPolicy, UpsampleRequest, UpsampleResult
from .tags import TagCategory, TagMap, classify


def tipo_request_of(request: UpsampleRequest, user_tags: TagMap) -> tipo.TipoRequest:
    """What ``kgen.protocol.tipo`` plans and builds prompts from."""
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
    budget: TokenBudget
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

    def fit_prompt(self, task: tipo.TipoTask, gen_meta: bool) -> FittedPrompt:
        """The model input with as much fed-back content as fits, and the settings to generate with.

        The newest fed-back sentences are left out first, then the newest fed-back tags.
        """
        new_tags = len(self.state.new_tags)
        new_sentences = len(self.state.new_sentences(self.state.caption_bucket(task.caption_field)))

        def build(kept: int) -> str:
            if kept >= new_tags:
                return self._build(task, gen_meta, None, kept - new_tags)
            return self._build(task, gen_meta, kept, 0)

        return fit_prompt(
            self.budget,
            build,
            new_tags + new_sentences,
            self.sampling,
            min_new_tokens=self.policy.min_new_tokens,
            rule=TrimRule.KEEP_MOST,
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
                candidates = canonical_tags(candidates[prompt_tags:])
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
            fitted = self.fit_prompt(attempt_task, gen_meta)
            prompt = fitted.prompt
            seed = (self.request.seed + attempt) % SEED_LIMIT
            completion = yield GenerationCall(prompt, fitted.settings, seed)
            added_tags, added_sentences, rejected = self.absorb(attempt_task, prompt, completion, fresh_best)
            record = Attempt(
                str(task),
                attempt,
                seed,
                prompt,
                completion,
                added_tags,
                added_sentences,
                rejected,
                fitted.trimmed,
            )
            self.attempts.append(record)
            if _task_met(self.state, task, self.request):
                return
            stalls = 0 if (added_tags or added_sentences) else stalls + 1
            if stalls >= self.policy.max_stalls:
                return


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


def tipo_steps(
    request: UpsampleRequest,
    budget: TokenBudget,
    dialect: tipo.TipoDialect,
    sampling: SamplingSettings,
    policy: RetryPolicy,
    protocol: str = "tipo",
) -> Generator[GenerationCall, Completion, UpsampleResult]:
    """Run ``request``'s TIPO tasks; ``protocol`` is the name the result reports (``tipo`` / ``tipo2``)."""
    started = time.perf_counter()
    user_tags = classify(request.tag_list)
    tipo_request = tipo_request_of(request, user_tags)
    run = _TipoRun(
        request=request,
        budget=budget,
        sampling=sampling,
        policy=policy,
        dialect=dialect,
        meta=tipo_request.meta(dialect),
        state=_user_state(request, user_tags, dialect),
        rng=random.Random(request.seed),
    )
    for task in tipo_request.plan(dialect):
        yield from run.run_task(task, gen_meta=False)
    state = run.state
    content = GeneratedContent(
        user_tags, state.new_tags, state.extended, state.generated, state.user_sentences
    )
    return assemble(
        request,
        content,
        protocol=protocol,
        attempts=run.attempts,
        banned=state.banned,
        seconds=time.perf_counter() - started,
    )
