"""summary.json keeps enough digits that a table's 0.1-point rounding matches the items."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from fslm.evaluate.report import build_summary


@dataclass
class _Described:
    name: str = "model:tiny"

    def describe(self) -> dict:
        return {"kind": "model", "params_touched": 1}


def _rows(task: str, correct: list[bool]) -> list[dict]:
    return [
        {"task": task, "acc": float(c), "acc_norm": None, "tokens_in": 3, "tokens_out": 1, "seconds": 0.1}
        for c in correct
    ]


def _summary(a: list[bool], b: list[bool]) -> dict:
    return build_summary(_Described(), {"arc_easy": [], "boolq": []}, _rows("arc_easy", a) + _rows("boolq", b), [])


def test_a_macro_of_1_3_and_2_7_prints_as_its_exact_value_not_a_rounded_rounding():
    summary = _summary([True, False, False], [True, True, False, False, False, False, False])
    exact = (1 / 3 + 2 / 7) / 2  # 0.309523...: 4 digits stored 0.3095, which printed 30.9
    assert f"{100 * summary['macro_acc']:.1f}" == f"{100 * exact:.1f}" == "31.0"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=40), st.lists(st.booleans(), min_size=1, max_size=40))
def test_stored_accuracies_print_like_the_exact_ones(a: list[bool], b: list[bool]):
    summary = _summary(a, b)
    exact_a, exact_b = sum(a) / len(a), sum(b) / len(b)
    assert f"{100 * summary['tasks']['arc_easy']['acc']:.1f}" == f"{100 * exact_a:.1f}"
    assert f"{100 * summary['macro_acc']:.1f}" == f"{100 * (exact_a + exact_b) / 2:.1f}"
