"""Integration tests on the real embedded model: the default stack answers offline, both branches."""

import pytest

from fslm.errors import ModelNotFoundError


@pytest.mark.slow
def test_default_stack_answers_capital_of_france():
    from fslm.models import resolve
    from fslm.stack import Stack

    try:
        resolve("smollm2-135m")
    except ModelNotFoundError as err:
        pytest.skip(str(err))
    stack = Stack.load()
    result = stack.run("What is the capital of France?")
    assert [r.stage for r in result.trace] == ["pick", "facts", "reasoning", "answer"]
    assert result.trace[0].skipped and all(r.output for r in result.trace[1:])  # no options: the chain answers
    assert "Paris" in result.answer and result.answer_stage == "answer"
    assert stack.engine.stats.generated_tokens == sum(r.tokens_out for r in result.trace)
    scored = stack.run("Which gas do plants take in from the air?\nA. helium\nB. carbon dioxide\nC. neon")
    assert scored.answer_stage == "pick" and scored.answer == "carbon dioxide"
    assert all(r.skipped for r in scored.trace[1:]) and len(scored.trace[0].option_scores) == 3
