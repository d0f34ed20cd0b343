"""Numeric command-line flags that refuse what makes no sense (nan, inf, zero, negative,
absurdly large) in argparse's one-line error, which names the flag."""

from __future__ import annotations

import argparse
import math


def number(kind: type, low: float, high: float = math.inf, low_open: bool = False):
    """An argparse `type`: a finite `kind` (int or float) in [low, high], or (low, high]
    with `low_open`."""
    if high == math.inf:
        expected = f"{'> ' if low_open else '>= '}{low:g}"
    else:
        expected = f"in {'(' if low_open else '['}{low:g}, {high:g}]"
    noun = "an integer" if kind is int else "a finite number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; expected {noun} {expected}") from None
        if not math.isfinite(value) or not low <= value <= high or (low_open and value == low):
            raise argparse.ArgumentTypeError(f"{text}: expected {noun} {expected}")
        return value

    return parse
