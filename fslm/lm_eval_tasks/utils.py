"""Hooks the task YAMLs call (lm-eval imports this file by path): data loading and fslm's own metrics."""

from fslm.evaluate.harness import harness_dataset
from fslm.evaluate.scoring import extract_number, mc2_mass, numbers_match


def load(**kwargs):
    return harness_dataset(**kwargs)


def process_results_mc2(doc, results):
    """TruthfulQA mc2: normalised probability mass on the true answers (gold_set, not a prefix)."""
    lls = [ll for ll, _ in results]
    return {"acc": mc2_mass(lls, doc["gold_set"])}


def process_results_gsm8k(doc, results):
    """Exact match of the final number, the same extraction `fslm eval` uses."""
    return {"exact_match": float(numbers_match(extract_number(results[0]), doc["answer"]))}
