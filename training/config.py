"""train.py's options for the optimisation (OptimConfig) and for what a run writes (OutputConfig)."""
from __future__ import annotations

from dataclasses import dataclass

from cli_config import ConfigError, check_rules, number_above, one_of, opt, whole_at_least

MIXED_PRECISIONS = ("no", "bf16", "fp16", "auto")
REPORT_TO = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio", "all",
             "none")


@dataclass
class OptimConfig:
    batch_size: int = opt(32, "queries per process per step")
    epochs: int = opt(1, "passes over the data (ignored when --max-steps > 0)")
    max_steps: int = opt(-1, "optimizer steps; > 0 overrides --epochs")
    lr: float = opt(2e-5, "peak learning rate (AdamW)")
    weight_decay: float = opt(0.01, "AdamW weight decay (not applied to biases and LayerNorm)")
    warmup_ratio: float = opt(0.1, "linear warm-up over this fraction of the steps, then linear decay to 0")
    max_grad_norm: float = opt(1.0, "gradient clipping (0 = off)")
    gradient_accumulation_steps: int = opt(1, "micro-batches per optimizer step (adds no negatives; "
                                               "use --grad-cache-chunk for bigger contrastive batches)")
    grad_cache_chunk: int = opt(0, "GradCache: embed the batch in chunks of N sequences (0 = off); same "
                                   "gradients, activation memory of N sequences")
    deepspeed: str = opt(None, "DeepSpeed JSON config (e.g. configs/deepspeed/zero2.json) to train with DeepSpeed")
    mixed_precision: str = opt("auto", "no | bf16 | fp16 | auto (bf16 on a GPU that has it, else no)")
    seed: int = opt(42, "seed for weights of new layers, sampling and negatives")
    max_bad_steps: int = opt(3, "stop (non-zero exit, last checkpoint kept) after this many optimizer steps in a row "
                                "with a non-finite loss or gradient norm; each is skipped (no update)")
    ddp_timeout: float = opt(1200, "seconds a collective may wait for the other processes before the run fails "
                                   "(a stalled or stopped rank); raise it if one checkpoint save or evaluation "
                                   "takes longer")

    def check(self) -> None:
        check_rules(self, {
            "lr": (number_above(0), "a finite number > 0"),
            "weight_decay": (number_above(0, inclusive=True), "a finite number ≥ 0"),
            "max_grad_norm": (number_above(0, inclusive=True), "a finite number ≥ 0 (0 = no clipping)"),
            "warmup_ratio": (lambda v: number_above(0, inclusive=True)(v) and v <= 1, "between 0 and 1"),
            "ddp_timeout": (number_above(0), "seconds > 0"),
            "seed": (lambda v: whole_at_least(0)(v) and v < 2**32, "a whole number from 0 to 2³² − 1 (numpy's seed "
                                                                  "range)"),
            "max_steps": (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number (≤ 0: --epochs)"),
            "epochs": (lambda v: whole_at_least(1)(v) or (whole_at_least(0)(v) and self.max_steps > 0),
                       "≥ 1 (or set --max-steps)"),
            **{key: (whole_at_least(1), "≥ 1") for key in ("batch_size", "gradient_accumulation_steps",
                                                           "max_bad_steps")},
            "grad_cache_chunk": (whole_at_least(0), "≥ 0"),
            "mixed_precision": one_of(MIXED_PRECISIONS),
        })


@dataclass
class OutputConfig:
    output_dir: str = opt("out", "final model goes here; checkpoints in checkpoint-<step>/")
    overwrite_output_dir: bool = opt(False, "train into an --output-dir that holds another run (different "
                                            "settings); its checkpoints and best/ are deleted first")
    save_steps: int = opt(0, "save a checkpoint every N steps (0 = only the final model)")
    save_total_limit: int = opt(2, "keep only the newest N checkpoints (0 = keep all)")
    resume_from_checkpoint: str = opt(None, "continue a run exactly (weights, optimizer, schedule, RNG, data "
                                            "position): a checkpoint-<step> folder, or 'latest' in --output-dir")
    allow_inexact_resume: bool = opt(False, "resume even when a process's saved random state does not load (dropout "
                                            "and other draws then differ from the uninterrupted run; refused "
                                            "otherwise)")
    log_steps: int = opt(10, "log loss / lr / throughput every N steps")
    report_to: str = opt("tensorboard", "tensorboard | none (logs in --output-dir/runs)")
    eval_sts: str = opt(None, "STS file (sentence1, sentence2, score) for periodic Spearman evaluation")
    eval_steps: int = opt(0, "evaluate every N steps (0 = only at the end, when --eval-sts is set)")

    def check(self) -> None:
        check_rules(self, {"log_steps": (whole_at_least(1), "≥ 1"),
                           **{key: (whole_at_least(0), "≥ 0") for key in ("save_steps", "save_total_limit",
                                                                         "eval_steps")},
                           "report_to": one_of(REPORT_TO)})
        if self.eval_steps and not self.eval_sts:
            raise ConfigError("eval_steps", f"{self.eval_steps}: evaluates --eval-sts, which is not set")
