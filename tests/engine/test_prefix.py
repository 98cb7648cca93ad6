"""Prefix reuse: the store's choice of prefix (pure) and the HF engine's outputs with it (a hit changes nothing)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fslm.engine import GenerationParams, load_engine
from fslm.engine.prefix import PrefixStore, common_prefix_length

INSTRUCTION = (
    "You restate requests. Say in one short sentence what the user is asking for, without answering it, and keep "
    "every name and number exactly as the user wrote it."
)
PROMPTS = ["What is the capital of France?", "Two plus two", "fox", "Which planet is largest of all the planets?"]


def stage_input(engine, prompt: str) -> str:
    return engine.render_chat([{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": prompt}])


def test_common_prefix_length():
    assert common_prefix_length([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_length([[5, 6]]) == 2
    assert common_prefix_length([[1], [2]]) == 0
    assert common_prefix_length([]) == 0


def test_store_seeds_from_a_batch_then_hits_for_single_rows():
    store = PrefixStore(budget_tokens=100, min_tokens=3)
    computed: list[list[int]] = []

    def compute(tokens):
        computed.append(tokens)
        return f"state{len(computed)}"

    assert store.lookup([[1, 2, 3, 4, 9], [1, 2, 3, 4, 8, 7]], "a", compute) == (4, "state1")
    assert store.lookup([[1, 2, 3, 4, 5]], "a", compute) == (4, "state1")  # a hit: nothing recomputed
    assert store.lookup([[1, 2, 3, 4, 5]], "b", compute) is None  # another adapter, no previous row: no prefix
    # the stored 4-token head would leave this row nothing of its own: a shorter head is computed instead
    assert store.lookup([[1, 2, 3, 4]], "a", compute) == (3, "state2")
    assert computed == [[1, 2, 3, 4], [1, 2, 3]] and store.stats.hits == 1


def test_store_seeds_a_single_row_from_the_previous_row_under_the_same_adapter():
    store = PrefixStore(budget_tokens=100, min_tokens=3)
    assert store.lookup([[7, 7, 7, 7, 1]], None, list) is None
    assert store.lookup([[7, 7, 7, 7, 2, 2]], None, list) == (4, [7, 7, 7, 7])
    assert store.lookup([[7, 7, 7, 7, 3]], None, list) == (4, [7, 7, 7, 7]) and store.stats.hits == 1


def test_store_stays_within_its_token_budget_least_recently_used_out():
    store = PrefixStore(budget_tokens=8, min_tokens=2)
    store.lookup([[1, 1, 1, 1, 0], [1, 1, 1, 1, 5]], None, list)
    store.lookup([[2, 2, 2, 2, 0], [2, 2, 2, 2, 5]], None, list)
    store.lookup([[3, 3, 3, 3, 0], [3, 3, 3, 3, 5]], None, list)
    assert store.tokens() <= 8
    assert store.lookup([[1, 1, 1, 1, 7]], "x", list) is None  # evicted first (and another adapter anyway)
    off = PrefixStore(budget_tokens=0)
    assert not off.enabled and off.lookup([[1, 2, 3], [1, 2, 4]], None, list) is None


@given(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=12), min_size=1, max_size=5))
def test_a_chosen_prefix_is_a_prefix_of_every_row_and_leaves_each_a_token(rows):
    store = PrefixStore(budget_tokens=64, min_tokens=1)
    for batch in (rows, rows[:1], rows[-1:]):
        got = store.lookup(batch, None, list)
        if got is not None:
            k, state = got
            assert all(r[:k] == state and len(r) > k for r in batch)


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_reusing_a_stage_head_changes_no_output(tiny_model_dir, penalty):
    """The same texts with prefix reuse off, on a first (computing) call and on later (hit) calls, batched and one by
    one: identical greedy outputs; the hits are counted and recomputed fewer tokens."""
    plain = load_engine(str(tiny_model_dir), prefix_cache_tokens=0)
    cached = load_engine(str(tiny_model_dir))
    cached.prefixes.min_tokens = 8
    params = GenerationParams(max_new_tokens=10, repetition_penalty=penalty)
    texts = [stage_input(plain, p) for p in PROMPTS]
    want = [g.text for g in plain.generate(texts, params)]
    first = [g.text for g in cached.generate(texts, params)]
    assert cached.prefixes.stats.stored == 1 and cached.stats.prefix_hits == 0
    k = cached.prefixes.tokens()
    assert k >= 8 and cached.stats.forward_tokens == plain.stats.forward_tokens - k * (len(texts) - 1)
    before = cached.stats.forward_tokens
    again = [g.text for g in cached.generate(texts, params)]
    assert cached.stats.forward_tokens - before == plain.stats.forward_tokens - k * len(texts)  # a hit runs no head
    single = [cached.generate([t], params)[0].text for t in texts]
    assert first == want and again == want and single == want
    assert cached.stats.prefix_hits == 1 + len(texts)
    assert cached.stats.prefix_tokens_reused == k * (len(texts) - 1) + k * len(texts) * 2


def test_prefix_states_are_per_adapter_and_dropped_when_adapters_change(tiny_model_dir, tiny_adapters):
    engine = load_engine(str(tiny_model_dir))
    engine.prefixes.min_tokens = 8
    params = GenerationParams(max_new_tokens=8)
    texts = [stage_input(engine, p) for p in PROMPTS]
    bare = [g.text for g in engine.generate(texts, params)]
    assert engine.prefixes.tokens() > 0
    engine.add_adapter("intent", str(tiny_adapters["intent"]))
    assert engine.prefixes.tokens() == 0
    with_adapter = [g.text for g in engine.generate(texts, params, adapter="intent")]
    reference = load_engine(str(tiny_model_dir), prefix_cache_tokens=0)
    reference.add_adapter("intent", str(tiny_adapters["intent"]))
    assert with_adapter == [g.text for g in reference.generate(texts, params, adapter="intent")]
    assert [g.text for g in engine.generate(texts, params)] == bare  # None = adapters off, its own states
