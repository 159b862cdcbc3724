"""Checks that output holds nothing biometric: no value of a face template printed at any
precision of 6 decimals or more, no run of more than 8 numbers (an embedding or landmarks
printed as a list or an array), and no field named like biometric data."""

from __future__ import annotations

import re

import numpy as np

#: Numbers printed with 6 or more decimals (template values lie within -1..1).
_PRECISE = re.compile(r"(?<![\d.])-?0?\.\d{6,}")
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
BIOMETRIC_WORDS = ("template", "embedding", "landmark", "descriptor")
MAX_NUMBERS_IN_A_ROW = 8


def template_values_in(text: str, template: np.ndarray) -> list[str]:
    """The numbers in `text` that are a template value as printed at their precision."""
    values = np.asarray(template, dtype=np.float64).ravel()
    found = []
    for token in _PRECISE.findall(text):
        decimals = len(token.split(".")[1])
        if np.any(np.abs(values - float(token)) < 0.5 * 10.0**-decimals):
            found.append(token)
    return found


def longest_run_of_numbers(text: str) -> int:
    """The most numbers that follow each other in `text` (separated by spaces, commas,
    brackets only)."""
    longest = run = 0
    for token in re.split(r"[\s,\[\]()]+", text):
        if not token:
            continue
        if _NUMBER.match(token):
            run += 1
            longest = max(longest, run)
        else:
            run = 0
    return longest


def assert_nothing_biometric(text: str, template: np.ndarray) -> None:
    assert template_values_in(text, template) == []
    assert longest_run_of_numbers(text) <= MAX_NUMBERS_IN_A_ROW


def assert_no_biometric_fields(value: object, where: str = "") -> None:
    """No key named like biometric data and no list of more than 8 numbers in a JSON
    document."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert not any(word in key.lower() for word in BIOMETRIC_WORDS), f"{where}.{key}"
            assert_no_biometric_fields(item, f"{where}.{key}")
    elif isinstance(value, list):
        numbers = sum(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        assert numbers <= MAX_NUMBERS_IN_A_ROW, where
        for i, item in enumerate(value):
            assert_no_biometric_fields(item, f"{where}[{i}]")
