"""Value rules: what a numeric or enumerated setting may be, declared once and checked in two places.

A rule is declared beside the setting (a `TrainConfig` field's metadata, an option of the command line) and
answers both callers with the same words: `check` for a value given in Python (a `UsageError` naming the
setting), `parse` for the text of a command-line option (argparse's error, which names the option itself).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError


@dataclass(frozen=True)
class Number:
    """A finite number from `low` (excluded when `above`) to `high` (included); a whole number if `whole`."""

    low: float
    high: float = math.inf
    above: bool = False
    whole: bool = False

    def problem(self, value: float) -> str | None:
        """What is wrong with `value`, or None when it is allowed."""
        if self.whole and (isinstance(value, bool) or not isinstance(value, int)):
            return f"must be a whole number, got {value!r}"
        if (
            not math.isfinite(value)
            or value < self.low
            or (self.above and value == self.low)
            or value > self.high
        ):
            show = str if self.whole else "{:g}".format  # whole numbers in full: 10000000, not 1e+07
            lower = f"above {show(self.low)}" if self.above else f"at least {show(self.low)}"
            upper = "" if math.isinf(self.high) else f" and at most {show(self.high)}"
            return f"must be {lower}{upper}, got {show(value)}"
        return None

    def check(self, value: float, name: str) -> None:
        """A `UsageError` naming `name` when `value` is not allowed."""
        problem = self.problem(value)
        if problem:
            raise UsageError(f"{name} {problem}")

    def parse(self, text: str) -> float:
        """An argparse option type: the number `text` writes, when allowed."""
        try:
            value = int(text) if self.whole else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a {'whole number' if self.whole else 'number'}"
            ) from None
        problem = self.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    def argparse(self) -> dict[str, Any]:
        """The `add_argument` keywords that apply this rule."""
        return {"type": self.parse}


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of words."""

    words: Sequence[str]

    def check(self, value: str, name: str) -> None:
        if value not in self.words:
            raise UsageError(f"{name} must be one of {', '.join(self.words)}; got {value!r}")

    def argparse(self) -> dict[str, Any]:
        return {"choices": list(self.words)}


def whole(low: int, high: float = math.inf) -> Number:
    """A whole number from `low` to `high`."""
    return Number(low, high, whole=True)
