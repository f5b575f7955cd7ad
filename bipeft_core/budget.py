"""Parameter budgets: parsing, resolution against a backbone, and the walks.

The paper writes its budget "1.39%" but means 1.39 per ten thousand (‱) of
the backbone's parameters (docs/algorithm.md §1). Here a budget is either an
absolute count or an exact ratio, and a ratio is always written with its unit:

>>> Budget.parse("102600").count
102600
>>> Budget.parse("1.39bp") == Budget.parse("1.39‱") == Budget.parse("0.0139%")
True
>>> Budget.parse("0.1%").resolve(22_565_376)
22565
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

import attrs

from bipeft_core.errors import BudgetError

__all__ = ["Budget", "fill_walk", "format_count", "prune_walk"]

_UNITS = {"%": Fraction(1, 100), "bp": Fraction(1, 10_000), "‱": Fraction(1, 10_000)}
_RATIO_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(%|bp|‱)\s*$")
_COUNT_RE = re.compile(r"^\s*[0-9][0-9_,]*\s*$")
_HELP = (
    "write a whole parameter count (e.g. '102600'), or a ratio with its unit: "
    "'0.0139%', '1.39bp' or '1.39‱' (per ten thousand)"
)


def _decimal_str(value: Fraction) -> str:
    """Exact decimal text of a fraction whose denominator is 2^a·5^b."""
    num, den = value.numerator, value.denominator
    k = 0
    while den % 10 ** k and k < 60:
        k += 1
    scaled = Fraction(num * 10**k, den)
    if scaled.denominator != 1:  # not a terminating decimal: show 12 digits
        return f"{float(value):.12g}"
    text = str(Decimal(scaled.numerator).scaleb(-k))
    if "E" in text or "e" in text:
        text = f"{Decimal(scaled.numerator).scaleb(-k):f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _as_fraction(x: Any) -> Fraction:
    if isinstance(x, Fraction):
        return x
    if isinstance(x, bool):
        raise BudgetError(f"a budget ratio must be a number, got {x!r}; {_HELP}")
    if isinstance(x, float):
        if not math.isfinite(x):
            raise BudgetError(f"a budget ratio must be finite, got {x!r}; {_HELP}")
        return Fraction(Decimal(repr(x)))
    if isinstance(x, (int, Decimal)):
        return Fraction(x)
    if isinstance(x, str):
        try:
            return Fraction(Decimal(x.strip()))
        except (InvalidOperation, ValueError):
            raise BudgetError(f"cannot read budget ratio {x!r}; {_HELP}") from None
    raise BudgetError(f"a budget ratio must be a number, got {x!r} ({type(x).__name__})")


def _check_count(count: int) -> int:
    if isinstance(count, bool) or not isinstance(count, int):
        raise BudgetError(f"a budget count must be a whole number, got {count!r}; {_HELP}")
    if count < 1:
        raise BudgetError(
            f"a budget must be at least 1 parameter, got {count}; give a positive count or ratio"
        )
    return count


def _check_ratio(ratio: Fraction) -> Fraction:
    if ratio <= 0:
        raise BudgetError(
            f"a budget ratio must be above 0, got {_decimal_str(ratio * 100)}%; give a positive ratio"
        )
    if ratio > 1:
        raise BudgetError(
            f"a budget ratio must be at most 1 (100%), got {_decimal_str(ratio * 100)}%; "
            "did you mean per-ten-thousand? write '1.39bp' or '0.0139%' for 1.39‱"
        )
    return ratio


@attrs.frozen(kw_only=True)
class Budget:
    """A PEFT parameter budget: an absolute ``count`` or a ``ratio`` of the
    backbone's parameters (task head excluded), never both."""

    count: int | None = None
    ratio: Fraction | None = None

    def __attrs_post_init__(self) -> None:
        if (self.count is None) == (self.ratio is None):
            raise BudgetError("a Budget has exactly one of count= or ratio=")
        if self.count is not None:
            _check_count(self.count)
        else:
            object.__setattr__(self, "ratio", _check_ratio(_as_fraction(self.ratio)))

    # -- construction ----------------------------------------------------------------
    @classmethod
    def of_count(cls, count: int) -> Budget:
        return cls(count=_check_count(count))

    @classmethod
    def of_ratio(cls, ratio: float | str | Fraction | Decimal) -> Budget:
        """A budget as a plain fraction of the backbone (``0.001`` is 0.1 %)."""
        return cls(ratio=_as_fraction(ratio))

    @classmethod
    def parse(cls, value: Budget | str | int | Any) -> Budget:
        """Read ``102600``, ``"102600"``, ``"0.0139%"``, ``"1.39bp"``,
        ``"1.39‱"``, or a mapping ``{"count": n}`` / ``{"ratio": r}``.

        A bare number is a parameter count and must be a whole number ≥ 1; a
        bare ``0.5`` is refused, since it could mean a count or a ratio.
        """
        if isinstance(value, Budget):
            return value
        if isinstance(value, dict):
            keys = set(value)
            if keys == {"count"}:
                return cls.of_count(value["count"])
            if keys == {"ratio"}:
                return cls.of_ratio(value["ratio"])
            if keys == {"value"}:
                return cls.parse(value["value"])
            raise BudgetError(
                f"a budget table has one key, 'value', 'count' or 'ratio'; got {sorted(keys)}"
            )
        if isinstance(value, bool):
            raise BudgetError(f"cannot read budget {value!r}; {_HELP}")
        if isinstance(value, int):
            return cls.of_count(value)
        if isinstance(value, float):
            if value.is_integer() and value >= 1:
                return cls.of_count(int(value))
            raise BudgetError(
                f"ambiguous budget {value!r}: a bare number is a parameter count and must be a "
                f"whole number >= 1. For a ratio write it with its unit, e.g. '{value * 100:g}%' "
                f"or '{value * 10000:g}bp', or use Budget.of_ratio({value!r})"
            )
        if not isinstance(value, str):
            raise BudgetError(f"cannot read budget {value!r} ({type(value).__name__}); {_HELP}")
        text = value.strip()
        m = _RATIO_RE.match(text)
        if m:
            try:
                number = Fraction(Decimal(m.group(1)))
            except InvalidOperation:  # pragma: no cover - the regex admits only numbers
                raise BudgetError(f"cannot read budget {value!r}; {_HELP}") from None
            return cls.of_ratio(number * _UNITS[m.group(2)])
        if _COUNT_RE.match(text):
            return cls.of_count(int(text.replace("_", "").replace(",", "")))
        try:
            plain = float(text)
        except ValueError:
            raise BudgetError(f"cannot read budget {value!r}; {_HELP}") from None
        if plain <= 0:
            raise BudgetError(f"a budget must be above 0, got {value!r}; {_HELP}")
        if plain.is_integer():
            return cls.of_count(int(plain))
        raise BudgetError(
            f"ambiguous budget {value!r}: a bare number is a parameter count and must be a whole "
            f"number >= 1. For a ratio write it with its unit, e.g. '{text}%' or '{text}bp'"
        )

    # -- use ---------------------------------------------------------------------
    def resolve(self, total_params: int) -> int:
        """The budget as a parameter count for a backbone of ``total_params``
        parameters (a ratio is rounded down: the budget is a ceiling)."""
        if self.count is not None:
            return self.count
        if not isinstance(total_params, int) or total_params < 1:
            raise BudgetError(
                f"cannot resolve ratio budget {self} against a backbone of {total_params!r} "
                "parameters; count the backbone's parameters first"
            )
        assert self.ratio is not None
        return max(1, math.floor(self.ratio * total_params))

    def to_value(self) -> str | int:
        """The spec value that parses back to this budget."""
        return self.count if self.count is not None else str(self)

    def describe(self, total_params: int | None = None) -> str:
        """Count and ratio together, e.g. ``22,565 (0.1% / 10bp of 22,565,376)``."""
        if total_params is None:
            return str(self)
        n = self.resolve(total_params)
        ratio = Fraction(n, total_params)
        return (
            f"{format_count(n)} parameters ({_decimal_str_rounded(ratio * 100)}% = "
            f"{_decimal_str_rounded(ratio * 10_000)}bp of {format_count(total_params)})"
        )

    def __str__(self) -> str:
        if self.count is not None:
            return str(self.count)
        assert self.ratio is not None
        pct = self.ratio * 100
        return f"{_decimal_str(pct)}%"


def _decimal_str_rounded(value: Fraction, digits: int = 4) -> str:
    return f"{float(value):.{digits}g}"


def format_count(n: int) -> str:
    """``102600`` → ``'102,600'``."""
    return f"{n:,}"


def fill_walk(sizes: Sequence[float], budget: float) -> list[bool]:
    """The trigger's indicator walk (docs/algorithm.md §5).

    ``sizes`` are in ranked order (most important first). A module is taken
    when the running total plus it stays within ``budget``; one that does not
    fit is skipped and the walk goes on. Returns one flag per module.
    """
    total = 0.0
    taken: list[bool] = []
    for size in sizes:
        if total + size <= budget:
            total += size
            taken.append(True)
        else:
            taken.append(False)
    return taken


def prune_walk(sizes: Sequence[float], delta: float) -> list[int]:
    """The module selector's pruning walk (docs/algorithm.md §6).

    ``sizes`` are in ascending order of importance. A module is pruned when
    the removed total plus it stays within ``delta``, else skipped; the first
    module is pruned even when it alone exceeds ``delta``; the walk stops once
    the removed total exceeds ``delta``. Nothing is pruned when ``delta <= 0``.
    Returns the positions (in ``sizes``) of the pruned modules.
    """
    if delta <= 0:
        return []
    removed = 0.0
    out: list[int] = []
    for i, size in enumerate(sizes):
        if removed > delta:
            break
        if i == 0 or removed + size <= delta:
            out.append(i)
            removed += size
    return out
