"""lm-eval task YAMLs for the local benchmark files; pass this folder to lm-eval's --include_path.

Each YAML loads its documents through `utils.load` (fslm.evaluate.harness.harness_dataset), which writes the
items fslm's loaders read to a JSONL cache and opens it with the datasets "json" builder, fully offline.
"""
