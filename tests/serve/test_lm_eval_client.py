"""A client written by someone else: lm-eval's `local-chat-completions` model pointed at a live `fslm serve` on the tiny
stack. It sends what it sends to vLLM or llama-server (temperature 0, a seed, stop strings, max_tokens = its
max_gen_toks) and must get the stack's greedy answers back, in request order."""

from __future__ import annotations

import pytest
from live_server import running_server

from fslm.serve import ServeSettings, create_app

QUESTIONS = ["What is the capital of France?", "How many legs does a spider have?"]


def test_lm_eval_local_chat_completions_generate_until(tiny_stack):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model
    from lm_eval.models.openai_completions import LocalChatCompletion

    assert get_model("local-chat-completions") is LocalChatCompletion
    with running_server(create_app(tiny_stack, ServeSettings())) as url:
        lm = LocalChatCompletion(
            base_url=url + "/v1/chat/completions",
            model="tiny",
            tokenizer_backend=None,
            tokenized_requests=False,
            max_retries=1,
            max_gen_toks=64,
        )
        requests = [
            Instance(
                request_type="generate_until",
                doc={"question": q},
                arguments=(lm.apply_chat_template([{"role": "user", "content": q}]), {"until": ["\n\n\n"]}),
                idx=i,
            )
            for i, q in enumerate(QUESTIONS)
        ]
        answers = lm.generate_until(requests, disable_tqdm=True)
    expected = [r.answer for r in tiny_stack.run_batch(QUESTIONS)]
    assert answers == [e.split("\n\n\n")[0] for e in expected]
    assert all(isinstance(a, str) for a in answers) and any(answers)
