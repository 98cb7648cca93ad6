"""Experiments as data: `fslm experiment run SPEC.yaml` trains, evaluates, compares and reports from one YAML file.

>>> from fslm.experiment import run_experiment
>>> result = run_experiment("docs/experiments/example.yaml", jobs=2)   # reruns resume; status=True only reads
>>> result.report                                                       # <out>/RESULTS.md

See docs/experiment.md for the spec format.
"""

from fslm.experiment.plan import Job, Plan, build_plan
from fslm.experiment.run import ExperimentError, ExperimentResult, run_experiment
from fslm.experiment.spec import ExperimentSpec, load_spec, parse_spec

__all__ = [
    "ExperimentError",
    "ExperimentResult",
    "ExperimentSpec",
    "Job",
    "Plan",
    "build_plan",
    "load_spec",
    "parse_spec",
    "run_experiment",
]
