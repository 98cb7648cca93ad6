"""One list of choices: the CLI checks --dtype, --targets and --precision against the library's own lists and takes
the finetune defaults from TrainOptions, all without importing torch."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from fslm.cli.common import check_dtype
from fslm.errors import InputError
from fslm.finetune.options import ALL_PROJECTIONS, PRECISIONS, TrainOptions
from fslm.models import DTYPES


def test_the_cli_accepts_exactly_the_dtypes_load_model_knows():
    import torch

    from fslm.models.load import _torch_dtype

    for name, canonical in DTYPES.items():
        check_dtype(name)
        assert _torch_dtype(name) is getattr(torch, canonical)
    with pytest.raises(InputError, match="--dtype 'float64'"):
        check_dtype("float64")


def test_finetune_defaults_are_the_options_defaults():
    from fslm.cli.finetune import finetune_command

    params = inspect.signature(finetune_command).parameters
    defaults = TrainOptions()
    for name in ("rank", "alpha", "lr", "epochs", "max_length", "batch_size", "save_every", "seed", "precision"):
        assert params[name].default.default == getattr(defaults, name), name
    assert params["targets"].default.default == ",".join(ALL_PROJECTIONS) == ",".join(defaults.targets)
    assert defaults.precision in PRECISIONS


def test_options_and_choices_import_without_torch():
    code = (
        "import sys\n"
        "from fslm.finetune import ALL_PROJECTIONS, PRECISIONS, TrainOptions\n"
        "from fslm.models import DTYPES\n"
        "import fslm.cli.finetune\n"
        "TrainOptions(precision=PRECISIONS[0]).validate()\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
