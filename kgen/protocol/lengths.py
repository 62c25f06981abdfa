"""Length targets shared by the TIPO and DanTagGen protocols."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Length(str, Enum):
    VERY_SHORT = "very_short"
    SHORT = "short"
    LONG = "long"
    VERY_LONG = "very_long"

    @classmethod
    def parse(cls, value: str | Length | None, default: Length | None = None) -> Length:
        """Accept ``very_short``, ``very short``, ``Very-Short`` ...; ``None``/"" gives ``default``."""
        if isinstance(value, Length):
            return value
        if value is None or not str(value).strip():
            if default is None:
                raise ValueError("a length target is required")
            return default
        key = str(value).strip().lower().replace(" ", "_").replace("-", "_")
        try:
            return cls(key)
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise ValueError(f"unknown length target {value!r}; choose one of: {choices}") from None

    @property
    def label(self) -> str:
        """Human form used in UIs: ``very short``."""
        return self.value.replace("_", " ")


@dataclass(frozen=True)
class Bounds:
    minimum: int
    maximum: int


# TIPO general-tag counts: retry until `minimum` is met, cap new tags at `maximum`.
TIPO_TAG_BOUNDS = {
    Length.VERY_SHORT: Bounds(6, 18),
    Length.SHORT: Bounds(18, 36),
    Length.LONG: Bounds(36, 54),
    Length.VERY_LONG: Bounds(54, 72),
}
# TIPO natural-language sentence counts.
TIPO_NL_BOUNDS = {
    Length.VERY_SHORT: Bounds(1, 2),
    Length.SHORT: Bounds(2, 4),
    Length.LONG: Bounds(4, 8),
    Length.VERY_LONG: Bounds(8, 10000),
}
# DanTagGen total tag targets.
DTG_TAG_TARGET = {
    Length.VERY_SHORT: 8,
    Length.SHORT: 16,
    Length.LONG: 32,
    Length.VERY_LONG: 48,
}
