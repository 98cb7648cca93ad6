"""GSM8K calculator targets: annotations nested into one expression that the safe calculator turns into the gold."""

from __future__ import annotations

from fslm.distill.gsm8k import build_records, nest, question_numbers, verified
from fslm.stages.tool import evaluate
from fslm.tasks.base import Item

NATALIA_Q = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many?"
NATALIA_A = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72"


def item(question: str, solution: str, gold: str) -> Item:
    """A GSM8K item as `load_task` builds it (only the fields the builder reads matter)."""
    return Item(
        id="gsm8k/train/0",
        task="gsm8k",
        question=question,
        choices=(),
        gold=gold,
        context=f"Question: {question}\nAnswer:",
        continuations=(),
        meta={"solution": solution},
    )


def test_a_result_used_later_is_replaced_by_the_expression_that_produced_it():
    assert nest(NATALIA_Q, NATALIA_A).expression == "48+(48/2)"
    assert evaluate("48+(48/2)") == 72


def test_a_number_the_question_states_is_copied_not_derived():
    q = "Tom has 2 apples and buys 2 more bags of 1 apple. How many?"
    a = "<<1*2=2>>2 apples bought. <<2+2=4>>4 apples.\n#### 4"
    assert nest(q, a).expression == "2+2"  # 2 is in the question: the model may copy it


def test_a_result_reused_twice_and_decimals_without_a_leading_zero():
    q = "A shirt costs $20 and is 10% off; she buys two. How much?"
    a = "<<20*.1=2>>2 off, so <<20-2=18>>18 each; <<18*2=36>>36 in all... <<36+0=36>>36\n#### 36"
    built = verified(q, a, "36")
    # "two" is a word, so the 2 in 18*2 is taken for the earlier result 2: a different expression, the same value
    assert built.expression == "((20-(20*.1))*(20*.1))+0"
    assert evaluate(built.expression) == 36


def test_an_annotation_whose_result_is_never_reused_does_not_appear():
    q = "Ann has 3 cats and 4 dogs. She counts 5 birds too. How many cats and dogs?"
    a = "<<3+5=8>>8 cats and birds (not asked). <<3+4=7>>7\n#### 7"
    assert nest(q, a).expression == "3+4"


def test_records_without_annotations_or_with_a_wrong_chain_are_dropped_with_a_reason():
    items = [
        item(NATALIA_Q, NATALIA_A, "72"),
        item("How many?", "No calculator here.\n#### 3", "3"),
        item("Add 2 and 2.", "<<2+2=5>>5\n#### 5", "5"),  # the annotation is wrong: the calculator says 4
        item("Add 2 and 2.", "<<2+2=4>>4\n#### four", "four"),
        item("Big?", "<<9**9**9=1>>1\n#### 1", "1"),  # the calculator refuses it
    ]
    records, dropped = build_records(items)
    assert [r["targets"]["expression"] for r in records] == ["48+(48/2)"]
    assert dropped == {
        "no calculator annotation": 1,
        "expression does not give the gold answer": 1,
        "gold answer is not a number": 1,
        "calculator refuses the expression": 1,
    }
    rec = records[0]
    assert rec["prompt"] == NATALIA_Q and rec["gold"] == "72" and set(rec) >= {"id", "index", "targets"}


def test_question_numbers_ignore_thousands_separators():
    assert question_numbers("It costs $1,200.50 for 3 days, i.e. .5 of it.") >= {1200.5, 3.0, 0.5}
