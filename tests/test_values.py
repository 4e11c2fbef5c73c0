"""The value rules shared by TrainConfig and the command line: one rule, the same words in both places."""

from __future__ import annotations

import argparse
import math

import pytest

from siglip.errors import UsageError
from siglip.tools.values import Choice, Number, whole


@pytest.mark.parametrize(
    "rule, text, message",
    [
        (whole(1, 4096), "10000000", "must be at least 1 and at most 4096, got 10000000"),
        (whole(0), "-3", "must be at least 0, got -3"),
        (whole(1), "1.5", "'1.5' is not a whole number"),
        (Number(0, above=True), "0", "must be above 0, got 0"),
        (Number(0, 1), "nan", "must be at least 0 and at most 1, got nan"),
        (Number(0), "x", "'x' is not a number"),
    ],
)
def test_parse_and_check_refuse_alike(rule, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=f"^{message}$"):
        rule.parse(text)
    try:
        value = int(text) if rule.whole else float(text)
    except ValueError:
        return  # not a number at all: only the command line can be given such text
    with pytest.raises(UsageError, match=f"^lr {message}$"):
        rule.check(value, "lr")


def test_allowed_values_pass_unchanged():
    assert whole(1, 4096).parse("4096") == 4096 and isinstance(whole(1).parse("7"), int)
    assert Number(0, 1).parse("0.25") == 0.25
    whole(1).check(3, "steps")
    Number(0, math.inf).check(1e300, "lr")
    with pytest.raises(UsageError, match=r"must be a whole number, got 2\.0"):
        whole(1).check(2.0, "steps")
    with pytest.raises(UsageError, match="must be a whole number, got True"):
        whole(0).check(True, "workers")


def test_a_choice_names_the_words():
    Choice(("a", "b")).check("a", "loss")
    with pytest.raises(UsageError, match="loss must be one of a, b; got 'c'"):
        Choice(("a", "b")).check("c", "loss")
    assert Choice(("a", "b")).argparse() == {"choices": ["a", "b"]}
