"""One integration test on the real embedded model: the default 4-stage stack answers offline."""

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
    assert [r.stage for r in result.trace] == ["intent", "facts", "reasoning", "answer"]
    assert all(r.output for r in result.trace)
    assert "Paris" in result.answer
    assert stack.engine.stats.generated_tokens == sum(r.tokens_out for r in result.trace)
