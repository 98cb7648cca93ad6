"""The calculator behind `tool` stages: right answers on GSM8K-style text, and hostile input always ends cleanly."""

from __future__ import annotations

import time

import pytest
from fuzzing import FUZZ, NASTY_STRINGS
from hypothesis import given
from hypothesis import strategies as st

from fslm.stages.tool import (
    MAX_EXPRESSION_CHARS,
    NO_ARITHMETIC,
    CalcError,
    calculate,
    calculator,
    evaluate,
    find_expressions,
    format_number,
)


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        ("Natalia sold 48/2 = 24 clips in May, so 48 + 24 in all.", "48/2 = 24\n48 + 24 = 72"),
        ("In 2023, 5 + 3 apples.", "5 + 3 = 8"),
        ("A box holds 1,000 pens; 2 * 1,000 = ?", "2 * 1000 = 2000"),
        ("(3 + 4) * 2 and 7 // 2 and 7 % 3 and 2 ** 10", "(3 + 4) * 2 = 14\n7 // 2 = 3\n7 % 3 = 1\n2 ** 10 = 1024"),
        ("It costs $5 × 3.", "5 * 3 = 15"),
        ("-4 + 10 and 1/3", "-4 + 10 = 6\n1/3 = 0.333333"),
        ("No numbers here, only 42.", NO_ARITHMETIC),
    ],
)
def test_arithmetic_in_text(text, lines):
    assert calculator(text) == (lines, ())


@pytest.mark.parametrize(
    ("expression", "error"),
    [
        ("9**9**9**9", "power too large"),
        ("10**19", "too large"),
        ("99999999999 * 99999999999", "too large"),
        ("1/0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("2 ** 0.5", "only whole-number powers"),
        ("0.5 ** -100", "power too large"),
        ("__import__('os')", "only numbers"),
        ("3 +", "not an arithmetic expression"),
        ("2023-05-01", "not an arithmetic expression"),
        ("abs(-3)", "only numbers"),
        ("1e999", "not a finite number"),
        ("(" * 150 + "1" + ")" * 150, "longer than"),
        ("(" * 99 + "1" + ")" * 99, None),
        ("1 if 1 else 2", "only numbers"),
        ("True + 1", "only numbers"),
        ("3j * 2", "only numbers"),
    ],
)
def test_refusals_are_clean_errors(expression, error):
    if error is None:
        assert evaluate(expression) == 1
        return
    with pytest.raises(CalcError, match=error):
        evaluate(expression)
    result = calculate(expression)
    assert result.value is None and error in result.line


def test_errors_are_recorded_not_shown_and_the_limit_holds():
    lines, errors = calculator("first 1/0 then 2 + 2 then 3 + 3", limit=2)
    assert lines == "2 + 2 = 4" and errors == ("1/0: division by zero",)
    assert len(find_expressions(" ".join(f"{i} + 1," for i in range(1000)), 16)) == 16


def test_numbers_are_formatted_for_reading():
    assert [format_number(x) for x in (24.0, 1 / 3, -2.5, 10**6, 0.1 + 0.2)] == [
        "24",
        "0.333333",
        "-2.5",
        "1000000",
        "0.3",
    ]


ARITH = st.sampled_from(["9", "99", "0", "1", "2.5", ".5", "10**", "**", "*", "/", "//", "%", "+", "-", "(", ")"])
ARITH = ARITH | st.sampled_from(["9**9**9**9", "(" * 40, ")" * 40, "1" * 60, "-" * 30, " ", "×", "÷", ",", "e", "j"])
hostile = st.lists(ARITH, max_size=40).map("".join)
any_text = hostile | st.sampled_from(NASTY_STRINGS) | st.text(max_size=200)


@FUZZ
@given(hostile)
def test_evaluate_returns_a_bounded_number_or_a_calc_error(expression):
    start = time.perf_counter()
    try:
        value = evaluate(expression)
    except CalcError as err:
        assert str(err) and "\n" not in str(err)
    else:
        assert isinstance(value, int | float) and abs(value) <= 10**18
    assert time.perf_counter() - start < 0.5


@FUZZ
@given(st.lists(any_text, max_size=5).map("\n".join))
def test_calculator_on_any_text_is_quick_and_clean(text):
    start = time.perf_counter()
    lines, errors = calculator(text)
    assert isinstance(lines, str) and all(len(e) < 200 for e in errors)
    assert time.perf_counter() - start < 0.5


def test_a_huge_input_stays_linear():
    text = ("1 + " * 200_000) + "1" + " and " + "(" * 100_000
    start = time.perf_counter()
    lines, errors = calculator(text)
    assert errors and errors[0].endswith("longer than 200 characters") and MAX_EXPRESSION_CHARS == 200
    assert time.perf_counter() - start < 2.0
