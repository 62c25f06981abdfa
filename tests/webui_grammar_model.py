"""An independent model of how the WebUI reads a prompt, written from its ``modules/extra_networks.py`` and
``modules/prompt_parser.py`` (A1111 1.10 / reForge / Forge), for the differential syntax test.

The WebUI reads a prompt in this order, and so does :func:`read_prompt`:

1. ``extra_networks.parse_prompt``: every ``<name:args>`` match of ``<(\\w+):([^>]+)>`` is cut out of the
   whole prompt (inside brackets too) and kept as a network;
2. ``get_multicond_prompt_list``: what is left is split at every ``\\bAND\\b`` (at any bracket depth); a
   trailing ``:number`` is the sub-prompt's weight;
3. ``get_learned_conditioning_prompt_schedules``: each sub-prompt is parsed by the lark grammar below (a
   failed parse leaves it as one plain text for every step); ``[a:b:n]`` / ``[a|b]`` give one text per step;
4. ``parse_prompt_attention``: each step's text becomes runs of (text, weight); a ``BREAK`` marker of
   weight -1 starts a new 75-token chunk.

The lark grammar (``schedule_parser``) modelled by :class:`_ScheduleParser`::

    !start: (prompt | /[][():]/+)*
    prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*
    !emphasized: "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"
    scheduled: "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
    alternate: "[" prompt ("|" [prompt])+ "]"
    WHITESPACE: /\\s+/
    plain: /([^\\\\\\[\\]():|]|\\\\.)+/

Where a bracket can be read both as a group and as literal text, the group reading is taken (as lark does
for the WebUI's own doctests). Nothing here imports the WebUI or lark.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
AND_KEYWORD = re.compile(r"\bAND\b")
SUBPROMPT_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")
SCHEDULE_NUMBER = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?))\s*\]")
ATTENTION_TOKEN = re.compile(r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:")
BREAK_KEYWORD = re.compile(r"\s*\bBREAK\b\s*", re.S)
BREAK_WEIGHT = -1.0
ROUND, SQUARE = 1.1, 1 / 1.1


@dataclass(frozen=True)
class ExtraNetwork:
    name: str
    args: str


@dataclass(frozen=True)
class Piece:
    """A comma/newline-separated piece of one attention run: what a user tag becomes."""

    text: str
    weight: float


@dataclass(frozen=True)
class StepView:
    end_step: int
    chunks: tuple[Counter, ...]  # one Counter of Piece per BREAK-separated chunk


@dataclass(frozen=True)
class SubPromptView:
    text: str
    weight: float
    parse_failed: bool
    steps: tuple[StepView, ...]


@dataclass(frozen=True)
class PromptView:
    networks: Counter
    subprompts: tuple[SubPromptView, ...]


# ------------------------------------------------------------------------------------------ schedule grammar


@dataclass(frozen=True)
class Scheduled:
    before: tuple | None  # None: "[b:n]" (nothing before the switch)
    after: tuple
    number: str


@dataclass(frozen=True)
class Alternate:
    options: tuple  # of item tuples; an option left out ("[a|]") is an empty tuple


Item = str | Scheduled | Alternate


class ScheduleParseError(ValueError):
    """Where lark raises: the WebUI then uses the sub-prompt as plain text for every step."""


class _ScheduleParser:
    def __init__(self, text: str):
        self.text = text

    def parse(self) -> tuple[Item, ...]:
        items: list[Item] = []
        pos, text = 0, self.text
        while pos < len(text):
            char = text[pos]
            if char in "([":
                found = self._group(pos)
                if found is not None:
                    group, pos = found
                    items.extend(group)
                    continue
                items.append(char)
                pos += 1
            elif char in ")]:":
                items.append(char)
                pos += 1
            else:
                end = self._plain_end(pos)
                if end == pos:  # "|" outside an alternation, or a backslash with nothing to escape
                    raise ScheduleParseError(f"cannot read {text[pos : pos + 10]!r} at {pos}")
                items.append(text[pos:end])
                pos = end
        return tuple(items)

    def _plain_end(self, pos: int) -> int:
        text = self.text
        while pos < len(text):
            char = text[pos]
            if char == "\\":
                if pos + 1 >= len(text) or text[pos + 1] == "\n":
                    return pos
                pos += 2
            elif char in "[]():|":
                return pos
            else:
                pos += 1
        return pos

    def _prompt(self, pos: int) -> tuple[tuple[Item, ...], int]:
        items: list[Item] = []
        while pos < len(self.text):
            char = self.text[pos]
            if char in "([":
                found = self._group(pos)
                if found is None:
                    break
                group, pos = found
                items.extend(group)
                continue
            end = self._plain_end(pos)
            if end == pos:
                break
            items.append(self.text[pos:end])
            pos = end
        return tuple(items), pos

    def _group(self, pos: int) -> tuple[tuple[Item, ...], int] | None:
        text = self.text
        first, after_first = self._prompt(pos + 1)
        if text[pos] == "(":
            if text.startswith(")", after_first):
                return ("(", *first, ")"), after_first + 1
            if text.startswith(":", after_first):
                second, after_second = self._prompt(after_first + 1)
                if text.startswith(")", after_second):
                    return ("(", *first, ":", *second, ")"), after_second + 1
            return None
        if text.startswith("]", after_first):
            return ("[", *first, "]"), after_first + 1
        if text.startswith(":", after_first):
            return self._scheduled(first, after_first + 1)
        if text.startswith("|", after_first):
            return self._alternate(first, after_first)
        return None

    def _scheduled(self, first: tuple, pos: int) -> tuple[tuple[Item, ...], int] | None:
        number = SCHEDULE_NUMBER.match(self.text, pos)
        if number is not None:
            return (Scheduled(None, first, number.group(1)),), number.end()
        second, after_second = self._prompt(pos)
        if self.text.startswith(":", after_second):
            number = SCHEDULE_NUMBER.match(self.text, after_second + 1)
            if number is not None:
                return (Scheduled(first, second, number.group(1)),), number.end()
        return None

    def _alternate(self, first: tuple, pos: int) -> tuple[tuple[Item, ...], int] | None:
        options = [first]
        while self.text.startswith("|", pos):
            option, pos = self._prompt(pos + 1)
            options.append(option)
        if self.text.startswith("]", pos):
            return (Alternate(tuple(options)),), pos + 1
        return None


def _switch_step(number: str, steps: int, int_offset: int, float_offset: float) -> int:
    value = float(number)
    value = (value - float_offset) * steps if "." in number else value - int_offset
    return min(steps, int(value))


def _collect_steps(items: tuple, steps: int, offsets: tuple[int, float]) -> set[int]:
    found: set[int] = set()
    for item in items:
        if isinstance(item, Scheduled):
            when = _switch_step(item.number, steps, *offsets)
            if when >= 1:
                found.add(when)
            found |= _collect_steps(item.before or (), steps, offsets)
            found |= _collect_steps(item.after, steps, offsets)
        elif isinstance(item, Alternate):
            found |= set(range(1, steps + 1))
            for option in item.options:
                found |= _collect_steps(option, steps, offsets)
    return found


def _text_at(items: tuple, step: int, steps: int, offsets: tuple[int, float]) -> str:
    out: list[str] = []
    for item in items:
        if isinstance(item, Scheduled):
            when = _switch_step(item.number, steps, *offsets)
            chosen = (item.before or ()) if step <= when else item.after
            out.append(_text_at(chosen, step, steps, offsets))
        elif isinstance(item, Alternate):
            out.append(_text_at(item.options[(step - 1) % len(item.options)], step, steps, offsets))
        else:
            out.append(item)
    return "".join(out)


def schedules(text: str, steps: int, hires_steps: int | None = None) -> tuple[list[tuple[int, str]], bool]:
    """(end step, text) pairs as ``get_learned_conditioning_prompt_schedules``, and whether the parse
    failed."""
    offsets, total = (0, 0.0), steps
    if hires_steps is not None:
        offsets, total = (steps, 1.0), hires_steps
    try:
        items = _ScheduleParser(text).parse()
    except ScheduleParseError:
        return [(total, text)], True
    ends = sorted(_collect_steps(items, total, offsets) | {total})
    return [(end, _text_at(items, end, total, offsets)) for end in ends], False


# ------------------------------------------------------------------------------------------ attention


def attention_runs(text: str) -> list[tuple[str, float]]:
    """(text, weight) runs as ``parse_prompt_attention``; BREAK is ("BREAK", -1)."""
    runs: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] *= factor

    for match in ATTENTION_TOKEN.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            runs.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(runs))
        elif token == "[":
            square_open.append(len(runs))
        elif weight is not None and round_open:
            scale(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            scale(round_open.pop(), ROUND)
        elif token == "]" and square_open:
            scale(square_open.pop(), SQUARE)
        else:
            for index, part in enumerate(BREAK_KEYWORD.split(token)):
                if index:
                    runs.append(["BREAK", BREAK_WEIGHT])
                runs.append([part, 1.0])
    for start in round_open:
        scale(start, ROUND)
    for start in square_open:
        scale(start, SQUARE)
    merged: list[list] = []
    for run in runs or [["", 1.0]]:
        if merged and abs(run[1] - merged[-1][1]) < 1e-4:
            merged[-1][0] += run[0]
        else:
            merged.append(list(run))
    return [(run_text, weight) for run_text, weight in merged]


def chunks_of(text: str, attention=None) -> tuple[Counter, ...]:
    """The pieces of each BREAK chunk of one step's text; ``attention`` reads (text, weight) runs as
    ``parse_prompt_attention`` does (default: this model's)."""
    chunks: list[Counter] = [Counter()]
    for run_text, weight in (attention or attention_runs)(text):
        if run_text == "BREAK" and weight == BREAK_WEIGHT:
            chunks.append(Counter())
            continue
        for piece in re.split(r"[,\n]", run_text):
            if piece.strip():
                chunks[-1][Piece(piece.strip(), round(weight, 4))] += 1
    return tuple(chunks)


# ------------------------------------------------------------------------------------------ whole prompt


def extra_networks(prompt: str) -> tuple[str, Counter]:
    found: Counter = Counter()

    def cut(match: re.Match) -> str:
        found[ExtraNetwork(match.group(1), match.group(2))] += 1
        return ""

    return EXTRA_NETWORK.sub(cut, prompt), found


def read_prompt(prompt: str, steps: int = 20, hires_steps: int | None = None) -> PromptView:
    stripped, networks = extra_networks(prompt)
    views = []
    for subprompt in AND_KEYWORD.split(stripped):
        match = SUBPROMPT_WEIGHT.search(subprompt)
        text, weight = (match.group(1), match.group(2)) if match else (subprompt, None)
        weight = float(weight) if weight is not None else 1.0
        pairs, failed = schedules(text, steps, hires_steps)
        step_views = tuple(StepView(end, chunks_of(step_text)) for end, step_text in pairs)
        views.append(SubPromptView(text, weight, failed, step_views))
    return PromptView(networks, tuple(views))


def differences(before: PromptView, after: PromptView, new_weights: frozenset[float]) -> list[str]:
    """What ``after`` does not keep of ``before``: every network, sub-prompt (count, weight, parse
    outcome), schedule step, BREAK and user piece with its weight must survive; what ``after`` adds may
    only be pieces of a weight in ``new_weights``."""
    problems: list[str] = []
    if before.networks != after.networks:
        problems.append(f"extra networks {dict(before.networks)} -> {dict(after.networks)}")
    if len(before.subprompts) != len(after.subprompts):
        return [*problems, f"{len(before.subprompts)} AND sub-prompts -> {len(after.subprompts)}"]
    for index, (old, new) in enumerate(zip(before.subprompts, after.subprompts, strict=True)):
        where = f"sub-prompt {index}"
        if abs(old.weight - new.weight) > 1e-9:
            problems.append(f"{where}: weight {old.weight} -> {new.weight}")
        if old.parse_failed != new.parse_failed:
            problems.append(f"{where}: schedule parse failed {old.parse_failed} -> {new.parse_failed}")
        old_ends = [step.end_step for step in old.steps]
        new_ends = [step.end_step for step in new.steps]
        if old_ends != new_ends:
            problems.append(f"{where}: schedule steps {old_ends} -> {new_ends}")
            continue
        for old_step, new_step in zip(old.steps, new.steps, strict=True):
            problems.extend(
                _step_differences(f"{where} step {old_step.end_step}", old_step, new_step, new_weights)
            )
    return problems


def _step_differences(where: str, old: StepView, new: StepView, new_weights: frozenset[float]) -> list[str]:
    if len(old.chunks) != len(new.chunks):
        return [f"{where}: {len(old.chunks) - 1} BREAK -> {len(new.chunks) - 1}"]
    problems = []
    for chunk, (old_pieces, new_pieces) in enumerate(zip(old.chunks, new.chunks, strict=True)):
        lost = old_pieces - new_pieces
        if lost:
            problems.append(f"{where} chunk {chunk}: lost {sorted(lost.elements(), key=repr)}")
        odd = [piece for piece in (new_pieces - old_pieces) if piece.weight not in new_weights]
        if odd:
            problems.append(f"{where} chunk {chunk}: added with a weight {sorted(odd, key=repr)}")
    return problems
