"""Small/large collaboration: the ways a small model cuts the cost of a large one.

* `speculative` — speculative decoding (transformers assisted generation, prompt lookup): `fslm generate --draft`.
* `contrastive` — contrastive decoding, expert minus amateur: `fslm generate --amateur`.
* `proxy` — proxy-tuning, a large model plus a small tuned-minus-base delta: `fslm generate --expert-delta`;
  `proxy_engine` makes it an Engine that scores options under the fused distribution (`fslm eval --expert-delta`).
* `cascade` + `runs` — escalate when the small system is unsure; pure analysis over `fslm eval` runs: `fslm cascade`.
* `live` — the same cascade actually running small, then large.
* `route` — a prompt-only router on sentence embeddings: `fslm route`.
* `generate` — the Python twin of `fslm generate`.
* `checker` — a small model's P(supported) for free-form answers, with a fitted flag threshold (Python only).

Submodules are imported on use, so `import fslm.collaborate` stays cheap.
"""
