"""The engine's shared-head KV reuse (added for evaluation: a primer or few-shot block shared by every item's
context is run once per call) gives the same scores as scoring each pair on its own."""

import pytest

PRIMER = "Q: What is the capital of France?\nA: The capital of France is Paris.\n\n" * 4


def test_shared_head_scores_equal_separate_scores(tiny_engine):
    contexts = [PRIMER + f"Q: {q}\nA:" for q in ("Which planet is largest?", "Two plus two?", "Where is Paris?")]
    conts = [" Jupiter", " four", " France"]
    contexts, conts = contexts + [contexts[0]], conts + [" Mars"]  # a repeated context too
    head_tokens = len(tiny_engine.encode(PRIMER))
    assert head_tokens >= 64  # long enough for the shared-head path
    before = tiny_engine.stats.forward_tokens
    together = tiny_engine.score(contexts, conts)
    used = tiny_engine.stats.forward_tokens - before
    separate = [tiny_engine.score([c], [x])[0] for c, x in zip(contexts, conts)]
    for a, b in zip(together, separate):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert (a.n_tokens, a.is_greedy, a.n_chars) == (b.n_tokens, b.is_greedy, b.n_chars)
    total = sum(len(tiny_engine.encode(c + x)) for c, x in zip(contexts, conts))
    assert used < total - 2 * head_tokens  # the head was run once, not once per context


def test_short_common_prefixes_keep_the_old_paths(tiny_engine):
    contexts = ["Question: sky?\nAnswer:", "Question: grass?\nAnswer:"]
    together = tiny_engine.score(contexts, [" blue", " green"])
    separate = [tiny_engine.score([c], [x])[0] for c, x in zip(contexts, [" blue", " green"])]
    assert [a.logprob for a in together] == pytest.approx([b.logprob for b in separate], abs=1e-4)
