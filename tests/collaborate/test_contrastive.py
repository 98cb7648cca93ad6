"""Contrastive decoding: the plausibility cut, the alpha=1 == greedy identity, batching, and bad pairs."""

from __future__ import annotations

import math

import pytest
import torch

from fslm.collaborate.contrastive import (
    ContrastiveParams,
    contrastive_generate,
    contrastive_scores,
    final_number,
    repeated_ngram_fraction,
)
from fslm.engine import GenerationParams
from fslm.errors import InputError

QUESTIONS = ["What is the capital of France?", "Which planet is largest? Answer in a word", "Two plus two"]
PARAMS = GenerationParams(max_new_tokens=16)


@pytest.fixture(scope="module")
def texts(tiny_engine):
    return [tiny_engine.render_chat([{"role": "user", "content": q}]) for q in QUESTIONS]


def test_scores_follow_the_paper():
    expert = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    amateur = torch.log(torch.tensor([[0.7, 0.1, 0.1, 0.1]]))
    scores = contrastive_scores(expert, amateur, ContrastiveParams(alpha=0.25))
    # Plausible: p >= 0.25 * 0.5 = 0.125 -> tokens 0, 1, 2; token 3 is cut even though the amateur dislikes it.
    assert math.isinf(scores[0, 3].item()) and scores[0, 3] < 0
    assert scores[0, 1].item() == pytest.approx(math.log(0.3 / 0.1))
    assert scores.argmax().item() == 1  # the expert's greedy choice (0) loses to what the amateur underrates
    # The amateur temperature flattens the amateur before the subtraction.
    hot = contrastive_scores(expert, amateur, ContrastiveParams(alpha=0.25, amateur_temperature=2.0))
    assert hot[0, 0].item() == pytest.approx(
        math.log(0.5) - torch.log_softmax(amateur / 2.0, -1)[0, 0].item(), rel=1e-5
    )


def test_alpha_one_is_expert_greedy(tiny_engine, draft_engine, texts):
    greedy = tiny_engine.generate(texts, PARAMS)
    cd = contrastive_generate(tiny_engine, draft_engine, texts, PARAMS, ContrastiveParams(alpha=1.0))
    assert [g.text for g in cd] == [g.text for g in greedy]
    assert [g.tokens_out for g in cd] == [g.tokens_out for g in greedy]


def test_contrastive_changes_output_and_batch_equals_one_by_one(tiny_engine, draft_engine, texts):
    params = ContrastiveParams(alpha=0.1)
    batched = contrastive_generate(tiny_engine, draft_engine, texts, PARAMS, params, batch_size=3)
    single = [contrastive_generate(tiny_engine, draft_engine, [t], PARAMS, params)[0] for t in texts]
    assert [g.text for g in batched] == [g.text for g in single]
    greedy = tiny_engine.generate(texts, PARAMS)
    assert [g.text for g in batched] != [g.text for g in greedy]


def test_stop_strings_cut_the_text(tiny_engine, draft_engine, texts):
    free = contrastive_generate(tiny_engine, draft_engine, texts[:1], PARAMS)[0]
    assert len(free.text) > 3
    stop = free.text[2:4]
    cut = contrastive_generate(tiny_engine, draft_engine, texts[:1], GenerationParams(max_new_tokens=16, stop=(stop,)))[
        0
    ]
    assert stop not in cut.text and free.text.startswith(cut.text) and cut.finish_reason == "stop"


def test_different_tokenizers_are_refused(tiny_engine, other_tok_engine, texts):
    with pytest.raises(InputError, match="one tokenizer"):
        contrastive_generate(tiny_engine, other_tok_engine, texts, PARAMS)


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.5])
def test_alpha_outside_range(alpha):
    with pytest.raises(InputError, match="alpha"):
        ContrastiveParams(alpha=alpha)


def test_sampling_is_refused(tiny_engine, draft_engine, texts):
    with pytest.raises(InputError, match="temperature"):
        contrastive_generate(tiny_engine, draft_engine, texts, GenerationParams(temperature=0.7))


def test_final_number_and_repetition():
    assert final_number("3 apples + 4 = 7 apples. The answer is 1,234.") == "1234"
    assert final_number("so #### 42") == "42"
    assert final_number("We get 5, then 12.50") == "12.5"
    assert final_number("no digits") is None
    assert repeated_ngram_fraction("a b c d a b c d a b c d") == pytest.approx(1 - 4 / 9)
    assert repeated_ngram_fraction("one two three four five") == 0.0
    assert repeated_ngram_fraction("short") == 0.0
