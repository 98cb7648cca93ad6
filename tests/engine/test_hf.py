import math

import pytest
import torch

from fslm.engine import GenerationParams, load_engine
from fslm.errors import ConfigError, InputError

PROMPTS = [
    "What is the capital of France?",
    "Two plus two",
    "A spider has eight legs. Water boils at 100 degrees. Which planet is largest?",
    "fox",
]


def chat(engine, text):
    return engine.render_chat([{"role": "system", "content": "Answer."}, {"role": "user", "content": text}])


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_greedy_batch_equals_one_by_one(tiny_engine, penalty):
    params = GenerationParams(max_new_tokens=12, repetition_penalty=penalty)
    texts = [chat(tiny_engine, p) for p in PROMPTS]
    batched = tiny_engine.generate(texts, params)
    single = [tiny_engine.generate([t], params)[0] for t in texts]
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.tokens_out for g in batched] == [g.tokens_out for g in single]
    assert all(g.tokens_in == tiny_engine.count_tokens(t) for g, t in zip(batched, texts))


def test_stop_strings_cut_output(tiny_engine):
    text = chat(tiny_engine, PROMPTS[0])
    free = tiny_engine.generate([text], GenerationParams(max_new_tokens=20))[0].text
    assert len(free) > 3
    stop = free[2:4]
    cut = tiny_engine.generate([text], GenerationParams(max_new_tokens=20, stop=(stop,)))[0]
    assert stop not in cut.text and free.startswith(cut.text)
    assert cut.finish_reason == "stop"


def test_sampling_is_seeded(tiny_engine):
    text = chat(tiny_engine, PROMPTS[1])
    params = GenerationParams(max_new_tokens=10, temperature=1.5, seed=7)
    assert tiny_engine.generate([text], params)[0].text == tiny_engine.generate([text], params)[0].text


def test_context_window_overflow_is_a_clear_error(tiny_engine):
    long = "fox " * (tiny_engine.context_window + 10)
    with pytest.raises(InputError, match="context window"):
        tiny_engine.generate([long], GenerationParams(max_new_tokens=4))


def reference_logprob(engine, context, continuation):
    ctx, cont = engine.encode_pair(context, continuation)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logits = engine.base(input_ids=ids).logits[0].float().log_softmax(-1)
    return sum(logits[len(ctx) - 1 + k, t].item() for k, t in enumerate(cont))


def test_score_matches_a_plain_forward_pass(tiny_engine):
    short_ctx = "Question: Which planet is largest?\nAnswer:"
    long_ctx = "A spider has eight legs. " * 8 + "Question: how many legs?\nAnswer:"
    contexts = [short_ctx, short_ctx, long_ctx, long_ctx, long_ctx]
    conts = [" Jupiter", " Mars", " eight", " four legs", " 8"]
    scores = tiny_engine.score(contexts, conts)
    for s, c, x in zip(scores, contexts, conts):
        assert math.isclose(s.logprob, reference_logprob(tiny_engine, c, x), rel_tol=1e-4, abs_tol=1e-4)
        assert s.n_tokens >= 1 and s.n_chars == len(x)


def test_adapters_share_one_base_and_change_output(tiny_model_dir, tiny_adapters):
    engine = load_engine(str(tiny_model_dir))
    text = chat(engine, PROMPTS[0])
    params = GenerationParams(max_new_tokens=10)
    plain = engine.generate([text], params)[0].text
    base_params = engine.params
    for name, path in tiny_adapters.items():
        engine.add_adapter(name, str(path))
    assert engine.params == base_params  # no second copy of the base
    outs = {name: engine.generate([text], params, adapter=name)[0].text for name in tiny_adapters}
    assert engine.generate([text], params, adapter=None)[0].text == plain
    assert all(o != plain for o in outs.values())
    s_plain = engine.score(["Question:"], [" Paris"])[0].logprob
    s_intent = engine.score(["Question:"], [" Paris"], adapter="intent")[0].logprob
    assert s_plain != s_intent
    with pytest.raises(ConfigError, match="not loaded"):
        engine.generate([text], params, adapter="missing")


def test_bad_adapter_folder(tiny_model_dir, tmp_path):
    engine = load_engine(str(tiny_model_dir))
    with pytest.raises(ConfigError, match="cannot load LoRA adapter"):
        engine.add_adapter("x", str(tmp_path))


def test_loop_guard_bans_repeated_generated_ngrams_only():
    from fslm.engine.decode import GeneratedNoRepeatNGram

    guard = GeneratedNoRepeatNGram(3, prompt_width=4)
    # prompt [5, 6, 1, 2] then generated [1, 2, 3, 1, 2]: "1 2 -> 3" already happened in the generated text.
    ids = torch.tensor([[5, 6, 1, 2, 1, 2, 3, 1, 2]])
    scores = guard(ids, torch.zeros(1, 10))
    assert scores[0, 3] == -float("inf")
    assert torch.isfinite(scores[0, [0, 1, 2, 4, 5, 6, 7, 8, 9]]).all()
    # The prompt's own n-grams are never banned: "1 2" followed by 1 in the prompt+generation boundary is fine.
    ids = torch.tensor([[1, 2, 7, 9, 1, 2]])
    assert torch.isfinite(GeneratedNoRepeatNGram(3, prompt_width=2)(ids, torch.zeros(1, 10))).all()


def test_loop_guard_runs_inside_generate(tiny_engine):
    text = chat(tiny_engine, "fox fox fox fox")
    plain = tiny_engine.generate([text], GenerationParams(max_new_tokens=30))[0]
    guarded = tiny_engine.generate([text], GenerationParams(max_new_tokens=30, no_repeat_ngram_size=2))[0]
    assert guarded.tokens_out > 0 and plain.tokens_out > 0


def test_flat_scoring_of_distinct_contexts_of_different_lengths(tiny_engine):
    # One continuation per context and continuations longer than contexts: the batched flat path, where logits are
    # computed only from the earliest position any row needs.
    contexts = ["Q:", "A spider has eight legs. How many legs?", "Which planet is the largest in the solar system?"]
    conts = [" the largest planet of all is Jupiter, by far", " eight legs in total", " Jupiter"]
    scores = tiny_engine.score(contexts, conts)
    for s, c, x in zip(scores, contexts, conts):
        assert math.isclose(s.logprob, reference_logprob(tiny_engine, c, x), rel_tol=1e-4, abs_tol=1e-4)


def test_scoring_batches_shrink_to_the_logits_budget_with_the_same_scores(tiny_model_dir):
    """Per-choice contexts (WinoGrande-style) are scored in flat batches; a large vocabulary must not make one batch's
    fp32 logits outgrow `score_logits_bytes`: the batch gets fewer rows, the scores stay the same."""
    contexts = [f"{name} went to the shop because" for name in ("Anna", "Bob", "Carla", "Dimitri", "Eve", "Frank")]
    conts = [" she was hungry", " he was late", " it rained", " the shop was open", " yes", " no no"]
    roomy = load_engine(str(tiny_model_dir))
    tight = load_engine(str(tiny_model_dir))
    vocab = roomy.vocab_size
    tight.score_logits_bytes = 12 * vocab * 4  # ~one row of a dozen positions per batch
    a, b = roomy.score(contexts, conts), tight.score(contexts, conts)
    assert roomy.stats.calls == 1 and tight.stats.calls >= len(contexts) // 2
    for x, y, c, cont in zip(a, b, contexts, conts):
        assert math.isclose(x.logprob, y.logprob, rel_tol=1e-5, abs_tol=1e-5)
        assert math.isclose(x.logprob, reference_logprob(roomy, c, cont), rel_tol=1e-4, abs_tol=1e-4)


def test_packed_scoring_runs_many_items_in_one_pass_with_the_reference_scores(tiny_model_dir):
    """Each context is packed with all its continuations (multi-token, different counts per item) into one row; ten
    items take one forward pass and every score equals the plain forward pass of its own context + continuation."""
    engine = load_engine(str(tiny_model_dir))
    contexts, conts = [], []
    for k in range(10):
        ctx = f"Question {k}: " + "which animal has eight legs? " * (1 + k % 3) + "Answer:"
        options = [" a spider", " an ant with six legs", " a fox", " the quick brown fox"][: 2 + k % 3]
        contexts += [ctx] * len(options)
        conts += options
    scores = engine.score(contexts, conts)
    assert engine._packs(engine.model) and engine.stats.calls == 1
    assert engine.stats.forward_tokens < sum(sum(map(len, engine.encode_pair(c, x))) for c, x in zip(contexts, conts))
    for s, c, x in zip(scores, contexts, conts):
        assert math.isclose(s.logprob, reference_logprob(engine, c, x), rel_tol=1e-4, abs_tol=1e-4)
        assert s.n_chars == len(x)


def test_packed_and_cache_copy_paths_give_the_same_scores(tiny_model_dir, tiny_adapters, monkeypatch):
    """Under an adapter too: the packed rows and the older paths (taken where the probe fails) agree, and greedy
    flags agree."""
    import fslm.engine.hf_score as hf_score

    contexts = ["A spider has eight legs. " * 6 + "How many legs?"] * 3 + ["Q:", "Which planet is largest?"]
    conts = [" eight", " six legs", " 8", " the largest planet of all is Jupiter", " Jupiter"]
    packed = load_engine(str(tiny_model_dir))
    packed.add_adapter("answer", str(tiny_adapters["answer"]))
    a = packed.score(contexts, conts, adapter="answer")
    monkeypatch.setattr(hf_score, "_probe_packing", lambda model, device: False)
    older = load_engine(str(tiny_model_dir))
    older.add_adapter("answer", str(tiny_adapters["answer"]))
    b = older.score(contexts, conts, adapter="answer")
    assert packed._packing is True and older._packing is False
    for x, y in zip(a, b):
        assert math.isclose(x.logprob, y.logprob, rel_tol=1e-4, abs_tol=1e-4)
        assert (x.n_tokens, x.is_greedy) == (y.n_tokens, y.is_greedy)


def test_the_packing_probe_refuses_a_model_that_ignores_the_4d_mask(tiny_model_dir, monkeypatch):
    from fslm.engine.hf_score import _probe_packing

    engine = load_engine(str(tiny_model_dir))
    assert _probe_packing(engine.model, engine.device) is True
    decoder = engine.base.get_decoder()
    plain = decoder.forward
    # A decoder that drops the mask: every packed token would see all tokens before it, other continuations too.
    monkeypatch.setattr(decoder, "forward", lambda *args, attention_mask=None, **kw: plain(*args, **kw))
    assert _probe_packing(engine.model, engine.device) is False


def test_packed_rows_after_a_shared_few_shot_head_keep_the_reference_scores(tiny_model_dir):
    """Contexts that share a long head (a primer): the head is run once, every packed row continues from its cache."""
    engine = load_engine(str(tiny_model_dir))
    primer = "Q: What has eight legs? A: a spider. Q: What has six legs? A: an ant. " * 4
    contexts, conts = [], []
    for q in ("What is red?", "What is blue and large?", "Name a fox."):
        for option in (" a rose", " the sea", " a small red fox"):
            contexts.append(f"{primer}Q: {q} A:")
            conts.append(option)
    scores = engine.score(contexts, conts)
    assert engine.stats.calls == 2  # the head, then every row in one pass
    for s, c, x in zip(scores, contexts, conts):
        assert math.isclose(s.logprob, reference_logprob(engine, c, x), rel_tol=1e-4, abs_tol=1e-4)


def test_a_sliding_window_model_is_packed_only_where_the_window_changes_nothing(tiny_model_dir, tmp_path):
    """A packed row's mask has no window: pairs longer than a model's sliding window are scored the older way, and
    both kinds of call keep the plain forward pass's scores (which apply the window)."""
    import shutil

    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from fslm.engine.hf_score import sliding_window

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, use_sliding_window=True, sliding_window=12, max_window_layers=0,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "qwen")
    for f in tiny_model_dir.iterdir():
        if "token" in f.name or f.name.endswith(".jinja"):
            shutil.copy(f, tmp_path / "qwen" / f.name)
    engine = load_engine(str(tmp_path / "qwen"))
    assert sliding_window(engine.base.config) == 12
    short = (["Q: red?"] * 2, [" yes", " no"])
    long = (["A spider has eight legs and a fox has four legs. How many legs?"] * 2, [" eight legs", " four"])
    # Many short items: each below the window, their shared rows far wider than it (positions restart per item).
    many = ([f"Q{k}?" for k in range(8) for _ in range(2)], [" yes", " no"] * 8)
    assert engine.score(*many) and engine.stats.calls == 1 and engine.stats.forward_tokens > 12
    for s, c, x in zip(engine.score(*many), *many):
        assert math.isclose(s.logprob, reference_logprob(engine, c, x), rel_tol=1e-4, abs_tol=1e-4)
    for contexts, conts in (short, long):
        before = engine.stats.calls
        scores = engine.score(contexts, conts)
        assert engine.stats.calls - before == (
            1 if contexts is short[0] else 2
        )  # packed: one pass; else context + options
        for s, c, x in zip(scores, contexts, conts):
            assert math.isclose(s.logprob, reference_logprob(engine, c, x), rel_tol=1e-4, abs_tol=1e-4)


@pytest.mark.parametrize("head_tokens", [0, 2048])
def test_rows_of_different_stages_in_one_batch_equal_separate_calls(tiny_model_dir, tiny_adapters, head_tokens):
    """generate_mixed: two adapters, bare rows, other max_new_tokens and stop strings share one batch; every row's
    text equals its own `generate` call, and the adapters do change the text (so a batch that ignored them fails).
    With the stage-head store on, each adapter's rows prefill apart from a stored head and are joined."""
    engine = load_engine(str(tiny_model_dir), prefix_cache_tokens=head_tokens)
    for name, path in tiny_adapters.items():
        engine.add_adapter(name, str(path))
    long = GenerationParams(max_new_tokens=12, no_repeat_ngram_size=3)
    short = GenerationParams(max_new_tokens=5, no_repeat_ngram_size=3)
    texts = [chat(engine, p) for p in PROMPTS]
    stop = engine.generate([texts[0]], long, adapter="intent")[0].text[3:5]
    stopped = GenerationParams(max_new_tokens=12, no_repeat_ngram_size=3, stop=(stop,))
    rows = [
        (texts[0], long, "intent"),
        (texts[1], short, "answer"),
        (texts[2], long, None),
        (texts[3], long, "answer"),
        (texts[0], stopped, "intent"),
        (texts[1], long, None),
        (texts[2], short, "intent"),
    ]
    calls_before = engine.stats.calls
    mixed = engine.generate_mixed(rows)
    if not head_tokens:
        assert engine.stats.calls - calls_before == 1  # one batch (batch_size 16), no head computed
    else:
        reused = engine.stats.prefix_tokens_reused
        assert [g.text for g in engine.generate_mixed(rows)] == [g.text for g in mixed]
        assert engine.stats.prefix_tokens_reused > reused  # the second call started from the stored heads
    alone = [engine.generate([text], params, adapter=adapter)[0] for text, params, adapter in rows]
    assert [g.text for g in mixed] == [g.text for g in alone]
    assert [(g.tokens_out, g.finish_reason) for g in mixed] == [(g.tokens_out, g.finish_reason) for g in alone]
    assert mixed[4].finish_reason == "stop" and stop not in mixed[4].text
    assert mixed[1].tokens_out <= 5 and mixed[6].tokens_out <= 5
    bare = {a: engine.generate([texts[0]], long, adapter=a)[0].text for a in (None, "intent", "answer")}
    assert len(set(bare.values())) == 3  # each adapter changes this text: the per-row choice is visible


def test_mixed_rows_with_other_sampling_settings_decode_apart(tiny_model_dir, tiny_adapters):
    engine = load_engine(str(tiny_model_dir))
    engine.add_adapter("intent", str(tiny_adapters["intent"]))
    greedy, penalised = GenerationParams(max_new_tokens=8), GenerationParams(max_new_tokens=8, repetition_penalty=1.3)
    text = chat(engine, PROMPTS[2])
    calls_before = engine.stats.calls
    made = engine.generate_mixed([(text, greedy, "intent"), (text, penalised, None)])
    assert engine.stats.calls - calls_before == 2  # a penalty is a batch-wide setting: two batches
    assert made[0].text == engine.generate([text], greedy, adapter="intent")[0].text
    assert made[1].text == engine.generate([text], penalised)[0].text


def test_mixed_rows_name_a_missing_adapter(tiny_engine):
    params = GenerationParams(max_new_tokens=4)
    with pytest.raises(ConfigError, match="'nope' is not loaded"):
        tiny_engine.generate_mixed([("a", params, None), ("b", params, "nope")])


def test_generate_mixed_falls_back_to_one_call_per_stage_setting(tiny_engine):
    """An engine without generate_mixed gets one `generate` per (params, adapter), rows back in order."""
    from fslm.engine import generate_mixed

    class Plain:  # the Engine protocol only
        def __init__(self, inner):
            self.inner, self.calls = inner, []

        def generate(self, texts, params, adapter=None):
            self.calls.append((len(texts), params.max_new_tokens))
            return self.inner.generate(texts, params, adapter=adapter)

    a, b = GenerationParams(max_new_tokens=3), GenerationParams(max_new_tokens=6)
    texts = [chat(tiny_engine, p) for p in PROMPTS]
    plain = Plain(tiny_engine)
    made = generate_mixed(plain, [(texts[0], a, None), (texts[1], b, None), (texts[2], a, None)])
    assert plain.calls == [(2, 3), (1, 6)]
    assert [g.text for g in made] == [
        tiny_engine.generate([texts[0]], a)[0].text,
        tiny_engine.generate([texts[1]], b)[0].text,
        tiny_engine.generate([texts[2]], a)[0].text,
    ]
