"""Rewriting the prompts of an image job with TIPO: the engine behind the WebUI extension.

The WebUI script hands over plain values (the prompts, image seeds, aspect ratio and :class:`TipoSettings`)
and writes back what comes out; everything between lives here: the user's prompt syntax is parsed, the tags
and caption go to the pipeline as an :class:`UpsampleRequest`, the new content is put back in place, and each
result is cached per (prompt, settings, seed, aspect ratio). With "different prompt per image", images that
share one prompt are rewritten by ONE variants pass (TGTS on a transformers model) instead of one pipeline
each. Pure Python at import time: models are loaded through ``kgen.models.loader`` only when needed.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from . import pipeline
from .engine.served import DEFAULT_CONTEXT_LENGTH, ServedBackend, ServerOptions
from .generation import Backend, SamplingSettings
from .pipeline import VariantSampler
from .protocol import formats
from .protocol import prompt_syntax as syntax
from .protocol.tags import tag_key
from .settings import SEED_MAX, TipoSettings
from .variants import variant_sampler


@dataclass(frozen=True)
class Variant:
    """Image ``index`` of ``count`` variants sampled together from the request seed ``seed``."""

    index: int
    count: int
    seed: int


@dataclass(frozen=True)
class Rewrite:
    prompt: str
    tokens: int = 0
    seconds: float = 0.0
    cached: bool = False
    variant: Variant | None = None
    note: str = ""  # why the prompt was kept as typed with the new content in front (malformed syntax)


# ------------------------------------------------------------------------------------------------ seeds


def derive_seed(tipo_seed: int, image_seed: int) -> int:
    """The seed of one image's rewrite: the TIPO seed plus the image seed."""
    return (int(tipo_seed) + int(image_seed)) % SEED_MAX


def source_of(prompt: str, settings: TipoSettings) -> str:
    """After an infotext paste through the API the prompt is still the rewritten one: start from the
    original."""
    if settings.source_prompt and settings.source_result and prompt == settings.source_result:
        return settings.source_prompt
    return prompt


def follow_hires(
    hr_prompts: Sequence[str], originals: Sequence[str], finals: Sequence[str], hr_follows_main: bool
) -> list[str]:
    """Hires prompts after the rewrite (the reference rule): an image's hires prompt becomes its new prompt
    when the job's hires prompt is its main prompt, or when it equals the image's original prompt."""
    return [
        finals[i] if (hr_follows_main or hr == originals[i]) and i < len(finals) else hr
        for i, hr in enumerate(hr_prompts)
    ]


# ------------------------------------------------------------------------------------------------ variants


@dataclass(frozen=True)
class VariantRecord:
    """What the infotext keeps so that one image of a variants pass can be made again alone: its index,
    the number of variants, and the base seed (the image seed of the job's first image)."""

    index: int
    count: int
    base_seed: int

    PATTERN = re.compile(r"^\s*(\d+)\s+of\s+(\d+)\s*\(\s*base seed\s+(\d+)\s*\)\s*$")

    def __str__(self) -> str:  # no comma: the infotext keeps it unquoted
        return f"{self.index} of {self.count} (base seed {self.base_seed})"

    @classmethod
    def parse(cls, text: Any) -> VariantRecord | None:
        """The record written by ``str()``; None for anything else (pasted text is untrusted)."""
        match = cls.PATTERN.match(text) if isinstance(text, str) else None
        if match is None:
            return None
        index, count, base_seed = (int(group) for group in match.groups())
        if not 0 <= index < count or count > MAX_VARIANTS or base_seed >= SEED_MAX:
            return None
        return cls(index, count, base_seed)

    @classmethod
    def of(cls, variant: Variant, tipo_seed: int) -> VariantRecord:
        return cls(variant.index, variant.count, (variant.seed - int(tipo_seed)) % SEED_MAX)


MAX_VARIANTS = 1024  # a pasted record asking for more is not honoured


# ------------------------------------------------------------------------------------------------ backends


class Backends(Protocol):
    def session(self, settings: TipoSettings):  # context manager of (backend, ModelSpec | None)
        ...


@dataclass(frozen=True)
class BackendConfig:
    """Where models live and how they are kept, as the application (WebUI settings, flags) says now."""

    models_dir: Path
    offline: bool = False
    memory: str = "offload"  # keep | offload | unload (kgen.models.loader.MemoryPolicy)
    default_device: str = "auto"  # what a device control of "auto" stands for
    cpu_precision: str = "auto"  # "int8": quantized transformers decoding on the CPU (opt-in, faster)
    served_url: str = ""  # an OpenAI-compatible server (e.g. http://127.0.0.1:8000/v1) generates instead


def device_for(control: str, default: str) -> str:
    """A device control of "auto" follows the application's default device."""
    return control if control and control != "auto" else (default or "auto")


class LoaderBackends:
    """Backends through ``kgen.models.loader.BackendCache`` (one model in memory at a time). ``config`` is
    read on every session, so changed settings take effect without a restart."""

    def __init__(
        self,
        config: Callable[[], BackendConfig],
        builder: Callable | None = None,
        served: Callable[[ServerOptions], Backend] | None = None,
    ):
        self.config = config
        self.builder = builder  # kgen.models.loader.build_backend unless given (tests)
        self.served_factory = served or ServedBackend
        self.served: Backend | None = None  # the backend of served_url, kept while the setting stays
        self.served_key: tuple[str, int] | None = None
        self.cache = None

    def store(self, config: BackendConfig | None = None):
        from .models.store import ModelStore

        config = config or self.config()
        return ModelStore(config.models_dir, offline=config.offline)

    @contextmanager
    def session(self, settings: TipoSettings) -> Iterator[tuple[Backend, Any]]:
        from .models import loader

        config = self.config()
        store = self.store(config)
        ref = store.resolve_untrusted(settings.model)  # never a path or URL from outside
        if config.served_url.strip():
            yield self._served_backend(config.served_url.strip(), ref.spec), ref.spec
            return
        if (
            self.cache is None
            or self.cache.store.root != store.root
            or self.cache.store.offline != store.offline
        ):
            if self.cache is not None:
                self.cache.unload()
            custom = {} if self.builder is None else {"builder": self.builder}
            self.cache = loader.BackendCache(store, **custom)
        options = loader.LoadOptions(
            device=device_for(settings.device, config.default_device),
            memory=config.memory or "offload",
            dtype="int8" if config.cpu_precision == "int8" else None,
        )
        with self.cache.session(ref, options) as backend:
            yield backend, ref.spec

    def _served_backend(self, url: str, spec: Any) -> Backend:
        """The served model of the setting; the chosen model names the protocol and the context size."""
        context = spec.context_length if spec is not None else DEFAULT_CONTEXT_LENGTH
        if self.served is None or self.served_key != (url, context):
            self.served = self.served_factory(ServerOptions(url, default_context_length=context))
            self.served_key = (url, context)
        return self.served


# ------------------------------------------------------------------------------------------------ engine


class Rewriter:
    """Finished prompts and the backends that make them; one per application, shared by its jobs.

    ``backends.session(settings)`` gives ``(backend, model spec)``; ``sampler_for(backend)`` chooses how the
    variants of a request are sampled (default: TGTS on transformers models, else independent samples).
    """

    def __init__(
        self,
        backends: Backends,
        cache_size: int = 512,
        sampler_for: Callable[[Backend], VariantSampler] = variant_sampler,
    ):
        self.backends = backends
        self.sampler_for = sampler_for
        self.cache_size = cache_size
        self.results: OrderedDict[tuple, Rewrite | tuple[Rewrite, ...]] = OrderedDict()
        self.outputs: OrderedDict[str, Rewrite] = OrderedDict()  # prompts we produced: never rewritten again
        self.lock = threading.RLock()
        self.generations = 0  # prompts generated (cache misses), for tests and the status line
        self.variant_passes = 0

    def _remember(self, key: tuple, value: Rewrite | tuple[Rewrite, ...]) -> None:
        self.results[key] = value
        for rewrite in value if isinstance(value, tuple) else (value,):
            self.outputs[rewrite.prompt] = rewrite
        while len(self.results) > self.cache_size:
            self.results.popitem(last=False)
        while len(self.outputs) > self.cache_size:
            self.outputs.popitem(last=False)

    @staticmethod
    def _key(prompt: str, settings: TipoSettings, seed: int, aspect_ratio: float, *extra: Any) -> tuple:
        return (prompt, settings.cache_key(), int(seed), round(float(aspect_ratio), 1), *extra)

    def _produced(self, prompt: str) -> Rewrite | None:
        """A prompt this engine wrote (a second processing pass, e.g. ADetailer): it stays as it is."""
        done = self.outputs.get(prompt)
        return None if done is None else replace(done, tokens=0, seconds=0.0, cached=True)

    def rewrite(self, prompt: str, settings: TipoSettings, seed: int, aspect_ratio: float) -> Rewrite:
        key = self._key(prompt, settings, seed, aspect_ratio)
        with self.lock:
            if key in self.results:
                self.results.move_to_end(key)
                return replace(self.results[key], tokens=0, seconds=0.0, cached=True)
            produced = self._produced(prompt)
            if produced is not None:
                return produced
            started = time.perf_counter()
            final, tokens = self._generate(prompt, settings, seed, aspect_ratio)
            note = RequestPlan.of(prompt, settings, seed, aspect_ratio).note
            rewrite = Rewrite(final, tokens, time.perf_counter() - started, note=note)
            self.generations += 1
            self._remember(key, rewrite)
            return rewrite

    def rewrite_variants(
        self, prompt: str, settings: TipoSettings, seed: int, aspect_ratio: float, n: int
    ) -> list[Rewrite]:
        """``n`` different rewrites of one prompt by one variants pass (variant ``i``: seed ``seed + i``)."""
        key = self._key(prompt, settings, seed, aspect_ratio, ("variants", n))
        with self.lock:
            if key in self.results:
                self.results.move_to_end(key)
                return [replace(r, tokens=0, seconds=0.0, cached=True) for r in self.results[key]]
            produced = self._produced(prompt)
            if produced is not None:  # e.g. a second pass over a batch whose variants all came out the same
                return [produced] * n
            started = time.perf_counter()
            made = self._generate_variants(prompt, settings, seed, aspect_ratio, n)
            if len(made) != n:
                raise RuntimeError(f"the variants pass returned {len(made)} prompts for {n} images")
            share = (time.perf_counter() - started) / n
            note = RequestPlan.of(prompt, settings, seed, aspect_ratio).note
            rewrites = tuple(
                Rewrite(final, tokens, share, variant=Variant(i, n, int(seed)), note=note)
                for i, (final, tokens) in enumerate(made)
            )
            self.generations += n
            self.variant_passes += 1
            self._remember(key, rewrites)
            return list(rewrites)

    def _generate(
        self, prompt: str, settings: TipoSettings, seed: int, aspect_ratio: float
    ) -> tuple[str, int]:
        job = RequestPlan.of(prompt, settings, seed, aspect_ratio)
        with self.backends.session(settings) as (backend, spec):
            result = pipeline.upsample(job.request, backend, model=spec, sampling=job.sampling)
        return job.compose(result), int(getattr(result, "completion_tokens", 0))

    def _generate_variants(
        self, prompt: str, settings: TipoSettings, seed: int, aspect_ratio: float, n: int
    ) -> list[tuple[str, int]]:
        job = RequestPlan.of(prompt, settings, seed, aspect_ratio)
        with self.backends.session(settings) as (backend, spec):
            results = pipeline.upsample_variants(
                job.request, backend, n, spec, job.sampling, sampler=self.sampler_for(backend)
            )
        return [(job.compose(result), int(getattr(result, "completion_tokens", 0))) for result in results]


@dataclass
class RequestPlan:
    """One WebUI prompt as a pipeline request, and how the pipeline's result goes back into it."""

    parsed: syntax.ParsedPrompt
    settings: TipoSettings
    request: pipeline.UpsampleRequest
    sampling: SamplingSettings
    nl_plain: str = field(default="")

    @classmethod
    def of(cls, prompt: str, settings: TipoSettings, seed: int, aspect_ratio: float) -> RequestPlan:
        parsed = syntax.parse(prompt)
        if not parsed.tags and settings.tag_prompt.strip():
            parsed = syntax.parse(_with_tag_prompt(parsed, settings.tag_prompt.strip()))
        nl_plain = syntax.plain_text(settings.nl_prompt)
        request = settings.to_request(
            tags=[tag.text for tag in parsed.tags], nl=nl_plain, aspect_ratio=aspect_ratio, seed=int(seed)
        )
        sampling = settings.sampling()
        return cls(parsed, settings, request, sampling, nl_plain)

    def compose(self, result: pipeline.UpsampleResult) -> str:
        return compose(self.parsed, result, self.settings, self.request.template, self.nl_plain)

    @property
    def note(self) -> str:
        hazard = self.parsed.rearrange_hazard()
        return f"prompt kept as typed, new content put in front of it: {hazard}" if hazard else ""


def _with_tag_prompt(parsed: syntax.ParsedPrompt, tag_prompt: str) -> str:
    """A prompt without tags and the "tag prompt" setting: where new content would go, or in front of a
    prompt that is kept as typed."""
    if not parsed.text.strip():
        return tag_prompt
    if parsed.rearrange_hazard():
        return f"{tag_prompt}, {parsed.text}"
    return syntax.insert_addition(parsed, tag_prompt)


def compose(parsed, result, settings: TipoSettings, template: str, nl_plain: str) -> str:
    """The final prompt: the user's prompt with its non-tag elements in place and the new content added.

    Nothing the user typed is dropped: a tag chunk goes into the formatted block only where the format lists
    its first tag (each chunk once), every other chunk stays where it was; an answer with nothing new leaves
    the prompt as typed; a prompt the WebUI may read otherwise than its segments say is kept byte-for-byte
    with the new content in front (``RequestPlan.note`` says why)."""
    if parsed.rearrange_hazard():
        return _checked(parsed, _in_front(parsed, result, settings, template))
    if settings.no_formatting:
        composed = syntax.append_content(parsed, result.new_tags, result.new_nl)
    elif not _shows_new_content(result, template):
        return parsed.text
    else:
        composed = _formatted(parsed, result, settings, template, nl_plain)
    if syntax.reads_the_same(parsed, composed):
        return composed
    return _checked(parsed, _in_front(parsed, result, settings, template))


def _shows_new_content(result, template: str) -> bool:
    """Whether the format shows anything the model added (else the prompt stays as typed)."""
    shown = set(formats.placeholders(template))
    new_keys = {tag_key(tag) for tag in result.new_tags}
    shown_tags = [tag for name in shown & set(formats.TAG_PLACEHOLDERS) for tag in result.tags.get(name)]
    if any(tag_key(tag) in new_keys for tag in shown_tags):
        return True
    captions = shown & set(formats.TEXT_PLACEHOLDERS)
    generated_shown = "generated" in shown or ("extended" in shown and not result.extended.strip())
    return bool(captions and result.new_nl.strip()) or (generated_shown and bool(result.generated.strip()))


def _checked(parsed, composed: str) -> str:
    """The last guard: a rewrite the WebUI would read differently (networks, sub-prompt weights, BREAKs)
    is not used; the prompt stays as typed."""
    return composed if syntax.reads_the_same(parsed, composed, rearranged=False) else parsed.text


def _formatted(parsed, result, settings: TipoSettings, template: str, nl_plain: str) -> str:
    placer = _ChunkPlacer.of(parsed)
    fields = result.fields()
    shown = set(formats.placeholders(template))
    for name, value in list(fields.items()):
        if isinstance(value, str):
            fields[name] = (
                _with_user_caption(value, nl_plain, settings.nl_prompt)
                if name == "extended"
                else syntax.escape(value)
            )
        elif name in shown:  # a chunk goes into the block only where the format shows its first tag
            fields[name] = [text for text in map(placer.place, value) if text is not None]
        else:
            fields[name] = []
    block = formats.apply_format(formats.PromptFields(**fields), template)
    return syntax.replace_tag_block(parsed, block, placer.placed)


def _in_front(parsed, result, settings: TipoSettings, template: str) -> str:
    """The prompt as typed with what the format shows of the new content in front of it."""
    used = set(formats.placeholders(template))
    shows_tags = settings.no_formatting or bool(used & set(formats.TAG_PLACEHOLDERS))
    shows_text = settings.no_formatting or bool(used & set(formats.TEXT_PLACEHOLDERS))
    return syntax.prepend_content(
        parsed, result.new_tags if shows_tags else [], result.new_nl if shows_text else ""
    )


@dataclass
class _ChunkPlacer:
    """The main section's tag chunks, each put into the formatted block (as typed) where the format lists
    its first tag; chunks never listed stay where they are in the prompt."""

    segments: tuple[syntax.Segment, ...]
    waiting: dict[str, list[int]]  # first-tag key -> segment indexes not placed yet, in prompt order
    user: set[str]  # keys of every user tag (written in some chunk of the prompt)
    placed: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, parsed: syntax.ParsedPrompt) -> _ChunkPlacer:
        waiting: dict[str, list[int]] = {}
        for index in parsed.main_unit_indexes():
            waiting.setdefault(tag_key(parsed.segments[index].tags[0].text), []).append(index)
        return cls(parsed.segments, waiting, {tag_key(tag.text) for tag in parsed.tags})

    def place(self, tag: str) -> str | None:
        """The text a tag of the result stands for in the block: a user chunk, a new tag (escaped), or None
        for a user tag whose chunk is placed by another tag or stays where it is."""
        key = tag_key(tag)
        queue = self.waiting.get(key)
        if queue:
            self.placed.append(queue.pop(0))
            return self.segments[self.placed[-1]].text
        return None if key in self.user else syntax.escape(tag)


def _with_user_caption(extended: str, nl_plain: str, nl_typed: str) -> str:
    """Keep the caption as the user typed it (weights included) when the model's text starts with it and
    the typed caption is plain text, weights and escapes only (nothing the WebUI would read as more)."""
    if nl_plain and extended.startswith(nl_plain) and _plain_caption(nl_typed):
        return nl_typed.strip() + syntax.escape(extended[len(nl_plain) :])
    return syntax.escape(extended)


def _plain_caption(text: str) -> bool:
    parsed = syntax.parse(text)
    plain_kinds = (syntax.SegmentKind.TAGS, syntax.SegmentKind.SEPARATOR)
    return parsed.rearrange_hazard() is None and all(s.kind in plain_kinds for s in parsed.segments)


# ------------------------------------------------------------------------------------------------ jobs


@dataclass
class JobRewrite:
    """The prompts of a job after TIPO, one per image, and what went wrong (the prompt kept as it was)."""

    prompts: list[str]
    rewrites: list[Rewrite]
    errors: list[str] = field(default_factory=list)

    @property
    def warning(self) -> str | None:
        notes = list(dict.fromkeys(rewrite.note for rewrite in self.rewrites if rewrite.note))
        if self.errors:
            first = next(iter(dict.fromkeys(self.errors)))
            unchanged = f"prompt left unchanged for {len(self.errors)} of {len(self.prompts)} image(s)"
            notes.insert(0, f"{unchanged}: {first}")
        return "; ".join(notes) or None

    def variant_notes(self, tipo_seed: int) -> dict[str, str]:
        """Final prompt -> the infotext record of its variant (images made by a variants pass only)."""
        notes: dict[str, str] = {}
        for rewrite in self.rewrites:
            if rewrite.variant is not None:
                notes.setdefault(rewrite.prompt, str(VariantRecord.of(rewrite.variant, tipo_seed)))
        return notes


def _failure(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


def rewrite_each(
    rewriter: Rewriter,
    settings: TipoSettings,
    prompts: Sequence[str],
    seeds: Sequence[int],
    aspect_ratio: float,
) -> JobRewrite:
    """One rewrite per prompt with its own seed; a failure keeps that prompt as it was."""
    job = JobRewrite([], [])
    for prompt, seed in zip(prompts, seeds, strict=True):
        try:
            rewrite = rewriter.rewrite(source_of(prompt, settings), settings, seed, aspect_ratio)
        except Exception as exc:
            job.errors.append(_failure(exc))
            rewrite = Rewrite(prompt)
        job.prompts.append(rewrite.prompt)
        job.rewrites.append(rewrite)
    return job


def rewrite_images(
    rewriter: Rewriter,
    settings: TipoSettings,
    prompts: Sequence[str],
    image_seeds: Sequence[int],
    tipo_seed: int,
    aspect_ratio: float,
) -> JobRewrite:
    """Timing "after": every image's prompt (styles and wildcards applied).

    Per image off: every image is rewritten with the first image's seed. Per image on: images that share
    one prompt get the variants of ONE pass (base seed: the first image's seed), image ``i`` variant ``i``;
    a single image pasted from such a job (``settings.source_variant``) gets its variant again; prompts that
    differ (wildcards) are rewritten one by one, each with its own image's seed.
    """
    prompts = list(prompts)
    if not settings.per_image:
        seeds = [derive_seed(tipo_seed, image_seeds[0])] * len(prompts)
        return rewrite_each(rewriter, settings, prompts, seeds, aspect_ratio)
    sources = [source_of(prompt, settings) for prompt in prompts]
    record = VariantRecord.parse(settings.source_variant)
    if len(prompts) == 1 and record is not None and sources[0] == settings.source_prompt:
        return _variants_job(
            rewriter,
            settings,
            prompts,
            sources[0],
            tipo_seed,
            record.base_seed,
            aspect_ratio,
            record.count,
            pick=record.index,
        )
    if len(prompts) > 1 and len(set(sources)) == 1:
        return _variants_job(
            rewriter, settings, prompts, sources[0], tipo_seed, image_seeds[0], aspect_ratio, len(prompts)
        )
    seeds = [derive_seed(tipo_seed, seed) for seed in image_seeds[: len(prompts)]]
    return rewrite_each(rewriter, settings, prompts, seeds, aspect_ratio)


def _variants_job(
    rewriter: Rewriter,
    settings: TipoSettings,
    prompts: list[str],
    source: str,
    tipo_seed: int,
    base_seed: int,
    aspect_ratio: float,
    count: int,
    pick: int | None = None,
) -> JobRewrite:
    try:
        variants = rewriter.rewrite_variants(
            source, settings, derive_seed(tipo_seed, base_seed), aspect_ratio, count
        )
    except Exception as exc:
        return JobRewrite(
            list(prompts), [Rewrite(prompt) for prompt in prompts], [_failure(exc)] * len(prompts)
        )
    chosen = [variants[pick]] if pick is not None else variants
    return JobRewrite([rewrite.prompt for rewrite in chosen], chosen)
