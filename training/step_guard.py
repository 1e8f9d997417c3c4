"""What every process decides together at each optimizer step: apply the update or skip a non-finite one, stop
after too many in a row, and stop at this step boundary because SIGTERM arrived.

Non-finite step: the loss of any of the step's micro-batches on any process, or the gradient norm (which clipping
computes anyway; after DDP's all-reduce it is the same on every process, and DeepSpeed's is global) is NaN or
±inf. One all-reduce of two numbers per step carries both signals, so all processes skip the same step even when
only one rank's batch went bad.

How a step is skipped:
  - plain, DDP, gradient accumulation, GradCache: train.py does not call optimizer.step() / scheduler.step() and
    zeroes the gradients, so the weights, AdamW moments and LR schedule are exactly those before the step. The
    step still counts (its batches are consumed), so --max-steps and the data position in checkpoints hold.
  - DeepSpeed steps inside `accelerator.backward`, before train.py sees the step. Its ZeRO-1/2/3 optimizers skip
    a step whose gradient norm is non-finite themselves (fp32 always; bf16 with `check_grad_overflow`, on by
    default; fp16 via the loss scaler), gradients zeroed and its schedule not stepped: the same skip, read back
    from `engine.was_step_applied()`. A bad step DeepSpeed applied anyway (a non-finite loss with finite
    gradients, or a config that turns the check off) cannot be undone: the run stops, non-zero, keeping the
    last checkpoint.
  - fp16 loss scaling: an overflowing gradient is how the scaler finds its scale, and it skips those steps
    itself; there only the loss counts as non-finite here.
After `max_bad_steps` bad steps in a row the run stops with SystemExit (exit code 1): every process raises at
the same step, nothing more is written, and the newest checkpoint (never a non-finite one: save_model refuses
those) is where to resume from.

SIGTERM (what SLURM and Kubernetes send before they kill a job): the handler only sets a flag; the flag is
agreed at the next step boundary like the finiteness check, train.py writes a checkpoint there (when
--save-steps is on) and exits with 143 = 128 + SIGTERM, the code of a process ended by SIGTERM, so job scripts
and schedulers treat the run as interrupted, not finished, and a requeued job resumes with
`--resume-from-checkpoint latest`.
"""
from __future__ import annotations

import math
import signal
import sys

import torch
from accelerate.utils import DistributedType

from training.checkpoint import complete_checkpoints

SIGTERM_EXIT_CODE = 128 + signal.SIGTERM


class StepGuard:
    def __init__(self, accelerator, model, max_bad_steps: int, output_dir: str, sources=None,
                 state: dict | None = None):
        """sources: dataset index -> "file:line" of that example, to name the rows of a bad micro-batch.
        state: `state_dict()` of the run's guard at the checkpoint resumed from (None: a fresh run, or a checkpoint
        written before it was saved, whose steps then count as applied)."""
        self.accelerator, self.model = accelerator, model
        self.max_bad_steps, self.output_dir = max_bad_steps, output_dir
        self.sources = sources
        self.micro_losses: list[tuple[torch.Tensor, torch.Tensor | None]] = []  # this step's (loss, example indices)
        fresh, state = state is None, state or {}
        self.bad_in_a_row: list[int] = list(state.get("bad_in_a_row", []))  # steps
        self.skipped = int(state.get("skipped", 0))
        self.applied = int(state["applied"]) if "applied" in state else (0 if fresh else None)  # None: not known
        self.sigterm_received = False  # this process got SIGTERM
        self.stop_requested = False  # some process got it: agreed at the last step boundary
        self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def close(self) -> None:
        """Give SIGTERM back to the handler it had before (train.main may run inside a longer-lived process)."""
        signal.signal(signal.SIGTERM, self._previous_handler)

    def _on_sigterm(self, signum, frame) -> None:
        self.sigterm_received = True

    def update_is_finite(self, loss: torch.Tensor, grad_norm, batch: dict, step: int) -> bool:
        """Call after every micro-batch's backward (and clipping); -> whether to apply the optimizer update.

        Between accumulation boundaries it only records the loss (no sync). At the step's last micro-batch it is
        a collective: every process gets the same answer, and SystemExit after too many bad steps in a row."""
        self.micro_losses.append((loss.detach(), batch.get("index")))
        if not self.accelerator.sync_gradients:
            return True
        losses = torch.stack([micro_loss.float() for micro_loss, _ in self.micro_losses])
        flags = torch.stack([(~torch.isfinite(losses)).any().float(),
                             torch.tensor(float(self.sigterm_received), device=losses.device)])
        flags = self.accelerator.reduce(flags, reduction="sum").tolist()  # [processes with a bad loss, with SIGTERM]
        bad_loss, self.stop_requested = flags[0] > 0, flags[1] > 0
        fp16 = self.accelerator.scaler is not None or getattr(self.model, "fp16_enabled", lambda: False)() is True
        bad_norm = grad_norm is not None and not fp16 and not math.isfinite(float(grad_norm))
        micro, self.micro_losses = self.micro_losses, []
        if not (bad_loss or bad_norm):
            self.bad_in_a_row = []
            if self.applied is not None:
                self.applied += 1
            return True

        self._report(step, micro, bad_loss, bad_norm, grad_norm)
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED and self.model.was_step_applied():
            self.close()
            raise SystemExit(f"step {step}: non-finite {'loss' if bad_loss else 'gradient norm'} and DeepSpeed "
                             f"applied the update anyway (it skips only non-finite gradients), so the weights "
                             f"cannot be trusted; stopping. {self._resume_hint()}")
        self.skipped += 1
        self.bad_in_a_row.append(step)
        if len(self.bad_in_a_row) >= self.max_bad_steps:
            first = self.bad_in_a_row[0]
            self.close()
            raise SystemExit(f"stopping: {len(self.bad_in_a_row)} optimizer steps in a row ({first}–{step}) had a "
                             f"non-finite loss or gradient norm (--max-bad-steps {self.max_bad_steps}); each was "
                             f"skipped, so the weights are still those after step {first - 1}; no model is written. "
                             f"{self._resume_hint()} Lower --lr, or check the rows "
                             f"named above.")
        if self.accelerator.scaler is not None:  # fp16: the scaler was unscaled by clipping and expects an update
            self.accelerator.scaler.update()
        return False

    def _report(self, step, micro, bad_loss, bad_norm, grad_norm) -> None:
        """Rank-local detail (which rows) from every process that saw a bad loss; the decision once, from main."""
        what = " and ".join(w for w, on in (("loss", bad_loss),
                                            (f"gradient norm ({float(grad_norm)})", bad_norm)) if on)
        self.accelerator.print(f"step {step}: non-finite {what}; update skipped "
                               f"({len(self.bad_in_a_row) + 1} in a row, stop at --max-bad-steps {self.max_bad_steps})")
        for loss, index in micro:
            if not torch.isfinite(loss).all():
                rows = ([self.sources(i) for i in index.tolist()] if index is not None and self.sources else [])
                print(f"[rank {self.accelerator.process_index}] step {step}: loss {loss.item()} on the batch of "
                      f"{', '.join(rows) if rows else 'unknown rows'}", file=sys.stderr, flush=True)

    def state_dict(self) -> dict:
        """What a checkpoint keeps, so a resumed run counts bad steps in a row and applied steps across the kill."""
        return {"bad_in_a_row": self.bad_in_a_row, "skipped": self.skipped, "applied": self.applied}

    def check_trained(self, steps: int) -> None:
        """At the end of the loop: SystemExit (exit 1, nothing written) when no optimizer step was applied in the
        whole run, or its last --max-bad-steps steps (all of them, in a shorter run) were skipped — its weights are
        then the base's, or those from before the steps that went bad, and a saved model would hide that."""
        window = min(self.max_bad_steps, steps)
        if self.applied == 0 or (window > 0 and len(self.bad_in_a_row) >= window):
            trained = "no optimizer step was applied" if self.applied == 0 else (
                f"its last {len(self.bad_in_a_row)} steps ({self.bad_in_a_row[0]}–{self.bad_in_a_row[-1]}) were "
                f"all skipped")
            raise SystemExit(f"training failed: {trained} ({self.skipped} of {steps} steps had a non-finite loss or "
                             f"gradient norm); no model is written. {self._resume_hint()} Lower --lr, raise "
                             f"--temperature, or check the rows named above.")

    def exit_after_sigterm(self, step: int, checkpoint: str | None) -> None:
        if checkpoint:
            saved = f"saved {checkpoint}. Resume with --resume-from-checkpoint latest."
        else:
            saved = ("no checkpoint written (--save-steps is 0), so a rerun starts from the beginning; pass "
                     "--save-steps N to be able to resume.")
        self.accelerator.print(f"SIGTERM: stopped after step {step}; {saved}", flush=True)
        self.close()
        sys.exit(SIGTERM_EXIT_CODE)

    def _resume_hint(self) -> str:
        found = complete_checkpoints(self.output_dir)
        if not found:
            return "There is no checkpoint to resume from."
        return f"The last checkpoint is {found[-1][1]} (step {found[-1][0]}; --resume-from-checkpoint latest)."


def clip_gradients(accelerator, modules: list, max_grad_norm: float):
    """At an accumulation boundary: clip the gradients of every trained module together (the encoder and a loss's
    own head, e.g. softmax's classifier, as sentence-transformers' fit clips its loss model) to max_grad_norm
    (0 = no clipping) and return their total norm before clipping; None between boundaries. Under DeepSpeed, the
    norm of the step the engine just took (it clips inside its step; losses with parameters are refused there)."""
    if not accelerator.sync_gradients:
        return None
    parameters = [p for m in modules for p in m.parameters()]
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return accelerator.clip_grad_norm_(parameters, max_grad_norm)
    if max_grad_norm > 0:
        return accelerator.clip_grad_norm_(parameters, max_grad_norm)
    accelerator.unscale_gradients()
    grads = [p.grad for p in parameters if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads) if grads else None
