import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fslm.engine import GenerationParams
from fslm.engine.decode import banned_ngram_tokens, decode_batch, fit_pairs
from fslm.errors import InputError

PROMPTS = ["What is the capital of France?", "Two plus two", "A spider has eight legs. Which planet is largest?", "fox"]


def encoded(engine):
    return [engine.encode(engine.render_chat([{"role": "user", "content": p}])) for p in PROMPTS]


def hf_greedy(engine, ids, max_new, eos):
    out = engine.base.generate(
        input_ids=torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=max_new,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=engine.tokenizer.pad_token_id,
        temperature=None,
        top_p=None,
        top_k=None,
    )
    new = out[0, len(ids) :].tolist()
    return new[: new.index(eos[0])] if eos[0] in new else new


def test_greedy_matches_transformers_generate(tiny_engine):
    prompts = encoded(tiny_engine)
    params = GenerationParams(max_new_tokens=10)
    pad = tiny_engine.tokenizer.pad_token_id
    for ids in prompts:
        mine = decode_batch(tiny_engine.base, [ids], params, pad_id=pad, eos_ids=[pad])[0]
        assert mine.tokens == hf_greedy(tiny_engine, ids, 10, [pad])


def test_rows_that_finish_early_leave_the_batch_without_changing_the_others(tiny_engine):
    prompts = encoded(tiny_engine)
    pad = tiny_engine.tokenizer.pad_token_id
    params = GenerationParams(max_new_tokens=12)
    free = [decode_batch(tiny_engine.base, [ids], params, pad_id=pad, eos_ids=[pad])[0].tokens for ids in prompts]
    # Declare as "eos" a token that the first row emits at step 3, so rows end at different steps.
    eos = [free[0][3]]
    single = [decode_batch(tiny_engine.base, [ids], params, pad_id=pad, eos_ids=eos)[0] for ids in prompts]
    batched = decode_batch(tiny_engine.base, prompts, params, pad_id=pad, eos_ids=eos)
    assert [d.tokens for d in batched] == [d.tokens for d in single]
    assert [d.reason for d in batched] == [d.reason for d in single]
    assert batched[0].reason == "stop" and len(batched[0].tokens) <= 3
    assert any(d.reason == "length" for d in batched), "the test needs a row that runs to max_new_tokens"
    for ids, d in zip(prompts, batched):
        assert d.tokens == hf_greedy(tiny_engine, ids, 12, eos)


def test_repetition_penalty_and_loop_guard_change_output_consistently(tiny_engine):
    prompts = encoded(tiny_engine)
    pad = tiny_engine.tokenizer.pad_token_id
    params = GenerationParams(max_new_tokens=16, repetition_penalty=1.5, no_repeat_ngram_size=2)
    batched = decode_batch(tiny_engine.base, prompts, params, pad_id=pad, eos_ids=[pad])
    single = [decode_batch(tiny_engine.base, [ids], params, pad_id=pad, eos_ids=[pad])[0] for ids in prompts]
    assert [d.tokens for d in batched] == [d.tokens for d in single]
    for d in batched:  # no bigram appears twice in the output
        pairs = list(zip(d.tokens, d.tokens[1:]))
        assert len(pairs) == len(set(pairs))


def test_stop_string_ends_a_row(tiny_engine):
    ids = encoded(tiny_engine)[0]
    pad = tiny_engine.tokenizer.pad_token_id
    decode_text = lambda t: tiny_engine.tokenizer.decode(t, skip_special_tokens=True)  # noqa: E731
    free = decode_batch(tiny_engine.base, [ids], GenerationParams(max_new_tokens=12), pad_id=pad, eos_ids=[pad])[0]
    stop = decode_text(free.tokens[4:6])
    params = GenerationParams(max_new_tokens=12, stop=(stop,))
    cut = decode_batch(tiny_engine.base, [ids], params, pad_id=pad, eos_ids=[pad], decode_text=decode_text)[0]
    assert cut.reason == "stop" and stop in decode_text(cut.tokens) and len(cut.tokens) <= 6


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 4), max_size=14), st.integers(1, 4))
def test_banned_tokens_are_exactly_the_ngram_completions(tokens, n):
    banned = banned_ngram_tokens(tokens, n)
    for t in range(5):
        extended = tokens + [t]
        grams = [tuple(extended[i : i + n]) for i in range(len(extended) - n + 1)]
        repeats = len(grams) != len(set(grams)) and grams[-1] in grams[:-1]
        assert (t in banned) == (len(tokens) >= n and repeats)


def test_stop_strings_without_a_detokenizer_are_refused(tiny_engine):
    import pytest

    ids = encoded(tiny_engine)[0]
    with pytest.raises(ValueError, match="decode_text"):
        decode_batch(tiny_engine.base, [ids], GenerationParams(max_new_tokens=4, stop=("x",)), pad_id=0, eos_ids=[0])


def test_fit_pairs_cuts_contexts_from_the_left_and_refuses_what_cannot_fit():
    pairs = [([1, 2, 3], [4]), ([1, 2, 3, 4, 5], [6, 7]), ([9], [8])]
    assert fit_pairs(pairs, 4) == [([1, 2, 3], [4]), ([4, 5], [6, 7]), ([9], [8])]
    with pytest.raises(InputError, match="continuation 1 alone exceeds the context window of 2"):
        fit_pairs(pairs, 2)
    with pytest.raises(InputError, match="continuation 0 is empty"):
        fit_pairs([([1], [])], 4)


def test_batches_prefilled_apart_and_joined_decode_like_one_batch(tiny_engine):
    """join_prefilled: rows prefilled in two groups (other widths, one from a stored head) and joined decode to the
    same tokens as the batch prefilled as one, in the original row order."""
    from fslm.engine.decode import join_prefilled, prefill

    ids = encoded(tiny_engine)
    pad, eos = tiny_engine.tokenizer.pad_token_id, tiny_engine.eos_ids
    params = GenerationParams(max_new_tokens=10)
    model = tiny_engine.base
    whole = decode_batch(model, ids, params, pad_id=pad, eos_ids=eos)
    head = 3  # every chat-rendered prompt starts with the same few template tokens
    assert len({tuple(i[:head]) for i in ids}) == 1
    with torch.inference_mode():
        state = model(input_ids=torch.tensor([ids[0][:head]]), use_cache=True).past_key_values
    groups = [[0, 2], [3, 1]]
    parts = [
        (groups[0], prefill(model, [ids[i] for i in groups[0]], pad_id=pad)),
        (groups[1], prefill(model, [ids[i] for i in groups[1]], pad_id=pad, prefix=(head, state))),
    ]
    joined = join_prefilled(parts)
    assert joined is not None and joined.attention.shape[0] == len(ids)
    apart = decode_batch(model, ids, params, pad_id=pad, eos_ids=eos, start=joined)
    assert [d.tokens for d in apart] == [d.tokens for d in whole]
    assert any(d.tokens for d in whole)


def test_per_row_limits_and_checks(tiny_engine):
    ids = encoded(tiny_engine)
    pad, eos = tiny_engine.tokenizer.pad_token_id, tiny_engine.eos_ids
    params = GenerationParams(max_new_tokens=8)
    out = decode_batch(tiny_engine.base, ids, params, pad_id=pad, eos_ids=eos, limits=[2, 8, 1, 8])
    full = decode_batch(tiny_engine.base, ids, params, pad_id=pad, eos_ids=eos)
    for d, f, cap in zip(out, full, [2, 8, 1, 8], strict=True):
        assert d.tokens == f.tokens[:cap]
    with pytest.raises(ValueError, match="one entry per prompt"):
        decode_batch(tiny_engine.base, ids, params, pad_id=pad, eos_ids=eos, limits=[2])
