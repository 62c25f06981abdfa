"""When a prompt must not be rearranged, and how generated text is kept from becoming WebUI syntax.

The WebUI reads a prompt in passes over the whole text: extra networks ``<name:args>`` are cut out first
(anywhere, even across commas), then ``AND`` splits sub-prompts at any bracket depth (a trailing ``:number``
is a sub-prompt weight), then the schedule grammar reads ``[a:b:n]`` / ``[a|b]`` (a ``|`` outside square
brackets or a backslash before a line end makes it give up on the whole sub-prompt), then unclosed
brackets weigh everything after them. The segmentation in
:mod:`kgen.protocol.prompt_syntax` follows a well-formed
prompt; :func:`rearrange_hazard` says where it cannot, and the engine then keeps the prompt byte-for-byte.
Pure Python, no WebUI import.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")  # modules/extra_networks.py re_extra_net
_OPEN_NETWORK = re.compile(r"<\w+:")
_KEYWORDS = {"AND": re.compile(r"\bAND\b"), "BREAK": re.compile(r"\bBREAK\b")}
_SUBPROMPT_WEIGHT = re.compile(r"\s*:\s*[-+]?(?:\d+\.?|\d*\.\d+)\s*$")  # prompt_parser re_weight
_PAIRS = {")": "(", "]": "["}
_BREAK_AT_EDITING = re.compile(r"\]BREAK\b|\bBREAK\[")

# ------------------------------------------------------------------------------------------ generated text

_SPECIAL = "()[]|:\\"
_ESCAPED_PAIR = re.compile(r"\\[^\n]")  # the schedule grammar reads "\\" + any character but a line end
_GENERATED_KEYWORD = re.compile(r"\b(?:AND|BREAK)\b")
_NETWORK_START = re.compile(r"<(?=\w)")
_COLON_NUMBER = re.compile(r"(\\:\s*)(?=[-+.\d])")  # "\\:3" -> "\\:\\3": never a sub-prompt weight


def escape_generated(text: str) -> str:
    """Model text as literal WebUI text: brackets, ``|``, ``:`` and lone backslashes get a backslash (a
    backslash pair already there is kept, so escaping twice changes nothing), ``AND`` / ``BREAK`` are
    lower-cased (the text encoders lower-case anyway), a number right after ``:`` gets a backslash too (else
    ``…:3`` at the end of a sub-prompt would be read as its weight), ``<`` before a word gets a backslash
    after it so no ``<name:args>`` network can form, and ``>`` is dropped so no open ``<name:`` typed by the
    user can be closed by it."""
    out, pos = [], 0
    while pos < len(text):
        pair = _ESCAPED_PAIR.match(text, pos)
        if pair:
            out.append(pair.group(0))
            pos = pair.end()
            continue
        char = text[pos]
        out.append("\\" + char if char in _SPECIAL else char)
        pos += 1
    escaped = _GENERATED_KEYWORD.sub(lambda match: match.group(0).lower(), "".join(out))
    escaped = _COLON_NUMBER.sub(r"\1\\", escaped)
    return _NETWORK_START.sub("<\\\\", escaped).replace(">", "")


# ------------------------------------------------------------------------------------------ hazards


def strip_networks(text: str) -> str:
    return EXTRA_NETWORK.sub("", text)


def rearrange_hazard(text: str, and_count: int, break_count: int) -> str | None:
    """Why the WebUI may read ``text`` differently from its depth-0 segmentation (``and_count`` /
    ``break_count``: the AND / BREAK keywords found at depth 0), or None when it may be rearranged."""
    stripped = strip_networks(text)
    if _OPEN_NETWORK.search(stripped):
        return "an extra network '<name:' is not closed by '>'"
    spaced = EXTRA_NETWORK.sub(" ", text)
    for keyword, pattern in _KEYWORDS.items():
        if len(pattern.findall(stripped)) != len(pattern.findall(spaced)):
            return f"an extra network glued to a word makes or breaks a {keyword}"
    if len(_KEYWORDS["AND"].findall(stripped)) != and_count:
        return "AND inside brackets (the WebUI splits there too)"
    if len(_KEYWORDS["BREAK"].findall(spaced)) != break_count:
        return "BREAK inside brackets"
    if _BREAK_AT_EDITING.search(stripped):
        return "BREAK glued to a '[' or ']' (prompt editing may glue a word to it)"
    return _bracket_hazard(stripped)


def _bracket_hazard(text: str) -> str | None:
    stack: list[str] = []
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char == "\\":
            following = text[pos + 1 : pos + 2]
            if following in ("", "\n") or following.isspace() or following == ",":
                return "a backslash that escapes nothing"
            pos += 2
            continue
        if char in "([":
            stack.append(char)
        elif char in ")]":
            if not stack or stack[-1] != _PAIRS[char]:
                return f"a '{char}' that closes no bracket"
            stack.pop()
        elif char == "|" and (not stack or stack[-1] != "["):
            return "a '|' outside square brackets (the WebUI then reads no prompt editing there)"
        pos += 1
    if stack:
        return f"an unclosed '{stack[-1]}'"
    return None


def subprompt_weighted(text: str) -> bool:
    """Whether the WebUI reads a ``:number`` sub-prompt weight at the end of ``text`` (one sub-prompt)."""
    return bool(_SUBPROMPT_WEIGHT.search(strip_networks(text)))


@dataclass(frozen=True)
class Reading:
    """The coarse WebUI reading of a prompt that a rewrite must keep: the extra networks, and per AND
    sub-prompt its ``:weight`` and its number of BREAK keywords."""

    networks: tuple[str, ...]
    subprompt_weights: tuple[str | None, ...]
    breaks: tuple[int, ...]


_TRAILING_WEIGHT = re.compile(r"\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+))\s*$")


def reading(text: str) -> Reading:
    subprompts = _KEYWORDS["AND"].split(strip_networks(text))
    weights = []
    for subprompt in subprompts:
        match = _TRAILING_WEIGHT.search(subprompt)
        weights.append(str(float(match.group(1))) if match else None)
    breaks = tuple(len(_KEYWORDS["BREAK"].findall(subprompt)) for subprompt in subprompts)
    return Reading(tuple(sorted(EXTRA_NETWORK.findall(text))), tuple(weights), breaks)
