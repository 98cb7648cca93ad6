"""LoRA training options and their choices, without torch: the CLI checks what a person typed against these (and
takes its defaults from them) before anything heavy is imported."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from fslm.errors import ConfigError

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # Llama-style names
PRECISIONS = ("auto", "bf16", "fp32")  # auto: bf16 autocast where the CPU has native bf16
SAVE_DTYPES = ("float32", "float16")  # adapter file storage; training itself stays fp32
KD_LEVELS = ("token", "choice")  # token: teacher logits per target token (one tokenizer); choice: option scores
CHOICE_QUESTIONS = 200  # choice-level distillation: questions drawn in all, a share per task
KD_FIELDS = ("kd", "kd_adapter", "kd_temperature", "kd_mix", "kd_level")


@dataclass
class TrainOptions:
    """Everything `fslm finetune` can be told; its defaults are the CLI's defaults."""

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    targets: tuple[str, ...] = ALL_PROJECTIONS
    lr: float = 5e-4
    epochs: int = 1
    max_length: int = 512
    batch_size: int = 8
    warmup: float = 0.1  # share of steps with a linear warmup, then linear decay to 0
    save_every: int = 50  # checkpoint every N optimizer steps (and at the end of a stage)
    seed: int = 0
    # speed: none of these change the objective
    bucketing: bool = True
    precision: str = "auto"  # auto | bf16 | fp32
    target_logits_only: bool = True
    threads: int | None = None  # fixed thread count; None: settings.threads, else picked by load (auto_threads)
    auto_threads: bool = True
    save_dtype: str = "float32"  # adapter file storage: float16 halves the size (training stays fp32)
    # memory: keep only each layer's input and recompute the rest in the backward pass (one more forward pass of
    # compute, a fraction of the activation memory; dropout masks are replayed, so the update is the same)
    gradient_checkpointing: bool = False
    # memory bound: a batch over this many padded tokens runs as micro-batches with gradients accumulated (the same
    # update); None: never split
    max_batch_tokens: int | None = 4096
    # distillation from a frozen teacher (docs/distill.md, "Knowledge distillation"); None: plain cross-entropy
    kd: str | None = None  # teacher model reference
    kd_adapter: str | None = None  # a LoRA adapter folder the teacher runs with
    kd_temperature: float = 2.0  # both distributions are softened by it; the KD term is scaled by its square
    kd_mix: float = 0.5  # loss = mix * KD + (1 - mix) * hard cross-entropy
    kd_level: str = "token"  # token | choice
    # weak-to-strong (Burns et al., 2023): this share of the KD term moves to the student's own hardened prediction
    kd_confidence: float = 0.0

    @property
    def distilling(self) -> bool:
        return self.kd is not None

    def math_fingerprint(self) -> dict:
        """Options a checkpoint must agree with to be resumed (speed options may change between runs)."""
        keep = (
            "rank",
            "alpha",
            "dropout",
            "targets",
            "lr",
            "epochs",
            "max_length",
            "batch_size",
            "warmup",
            "seed",
            "bucketing",
        )
        if self.distilling or self.kd_level != "token":  # only then: older checkpoints keep their fingerprint
            keep += KD_FIELDS + (("kd_confidence",) if self.kd_confidence else ())  # older checkpoints still resume
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if k in keep}

    def validate(self) -> None:
        if (
            self.rank < 1
            or self.alpha <= 0
            or self.lr <= 0
            or self.epochs < 1
            or self.batch_size < 1
            or self.save_every < 1
        ):
            raise ConfigError("rank, alpha, lr, epochs, batch size and save-every must all be positive")
        if self.max_batch_tokens is not None and self.max_batch_tokens < 1:
            raise ConfigError(f"--max-batch-tokens must be positive, got {self.max_batch_tokens}")
        if self.max_length < 8:
            raise ConfigError("--max-length must be at least 8 tokens")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision {self.precision!r}: expected {', '.join(PRECISIONS)}")
        if self.save_dtype not in SAVE_DTYPES:
            raise ConfigError(f"--save-dtype {self.save_dtype!r}: expected {' or '.join(SAVE_DTYPES)}")
        if not self.kd_temperature > 0:  # also refuses NaN
            raise ConfigError(f"--kd-temperature must be > 0, got {self.kd_temperature}")
        if not 0 <= self.kd_mix <= 1:
            raise ConfigError(f"--kd-mix must be between 0 and 1 (the KD term's share of the loss), got {self.kd_mix}")
        if not 0 <= self.kd_confidence < 1:
            raise ConfigError(f"--kd-confidence must be in [0, 1) (the student's own share), got {self.kd_confidence}")
        if self.kd_confidence and (self.kd is None or self.kd_level != "choice"):
            raise ConfigError("--kd-confidence needs a teacher at --kd-level choice (--kd MODEL --kd-level choice)")
        if self.kd_level not in KD_LEVELS:
            raise ConfigError(f"--kd-level {self.kd_level!r}: expected {' or '.join(KD_LEVELS)}")
        if self.kd is not None and not self.kd.strip():
            raise ConfigError("--kd names no teacher model")
        if self.kd is None and self.kd_adapter is not None:
            raise ConfigError("--kd-adapter needs a teacher: --kd MODEL")
