"""Train a text-embedding bi-encoder: config → data → model → loss → optimizer → loop → save.

    python train.py --model PATH_OR_ID --train-data data.jsonl --loss gte --output-dir out
    torchrun --nproc_per_node 8 train.py ...      (same script; in-batch negatives are gathered across GPUs)
    torchrun --nproc_per_node 8 train.py ... --deepspeed configs/deepspeed/zero2.json --grad-cache-chunk 64

The finished model is written to --output-dir (safetensors, tokenizer, sentence-transformers files);
checkpoints go to --output-dir/checkpoint-<step>/, and the same command plus `--resume-from-checkpoint latest`
continues a killed run exactly. Run `python train.py --help` for every option.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field

import torch
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cli_config import option_name, parse_config
from data.bucket_sampler import check_sampler_options
from data.collator import Collator
from data.examples import DataError, check_data_path, hub_offline, load_examples, looks_like_hub_id, pair_kind_for
from data.groups import GroupedDataset, PreparedGroupedDataset
from data.prepared import PreparedCorpus, is_prepared, prepare_hint, read_manifest
from data.train_sampler import build_prepared_sampler, build_train_sampler
from losses import LOSS_NAMES, build_loss, loss_temperature
from losses.gte import DIRECTIONS
from losses.tiled import DEFAULT_TILE, choose_tiling
from models.bi_encoder import BiEncoder
from models.checks import MaxLengthError, check_max_lengths, check_model_folder, check_tokenizer_folder
from models.pooling import POOLING_MODES
from training.accelerator import build_accelerator, uses_deepspeed
from training.checkpoint import (check_random_states, check_same_run, find_checkpoint, read_trainer_state,
                                 save_checkpoint, save_model, write_run_record)
from training.deepspeed_config import load_deepspeed_config
from training.even_steps import common_batch_count
from training.grad_cache import deepspeed_grad_cache_warning
from training.log_window import LogWindow
from training.optimizer import build_optimizer
from training.output_dir import check_output_dir, claim_output_dir
from training.step import batch_to_device, train_step
from training.step_guard import StepGuard, clip_gradients


MIXED_PRECISIONS = ("no", "bf16", "fp16", "auto")
ATTENTION = ("sdpa", "eager", "flash_attention_2")
REPORT_TO = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio", "all",
             "none")


def opt(default, help: str):
    """A config field with its --help text."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # model
    model: str = opt("", "backbone: local folder or Hub id (weights, or tokenizer only with --from-config)")
    from_config: str = opt(None, "build the backbone with random weights from this config (path or Hub id)")
    pooling: str = opt(None, "mean | cls | last (default: the model's saved pooling, else mean)")
    normalize: bool = opt(None, "L2-normalise embeddings (default: the model's saved setting, else on)")
    query_prompt: str = opt(None, "prefix for queries, e.g. 'query: ' (E5); a row's own `prompt` wins")
    passage_prompt: str = opt(None, "prefix for passages, e.g. 'passage: ' (E5)")
    query_max_len: int = opt(64, "max tokens per query")
    passage_max_len: int = opt(256, "max tokens per passage")
    gradient_checkpointing: bool = opt(False, "recompute activations in backward to save memory")
    attn_implementation: str = opt("sdpa", "sdpa | eager | flash_attention_2")
    # data
    train_data: list = opt([], "training files or folders (BGE JSONL, pair/triplet JSONL/TSV, NLI TSV, scored pairs), "
                               "or one prepared corpus folder (scripts/prepare_data.py; memory-mapped, for big data)")
    group_size: int = opt(8, "passages per query: 1 positive + group_size-1 negatives (pair losses use 1)")
    score_max: float = opt(5.0, "scored pairs (cosine loss): label = score / score_max")
    skip_bad_rows: bool = opt(False, "skip invalid rows (counted and reported) instead of stopping")
    num_workers: int = opt(0, "DataLoader worker processes")
    length_buckets: bool = opt(True, "batch examples of similar token length (BGE-style buckets; far less padding)")
    num_buckets: int = opt(0, "length buckets of about equal size; 0 = auto (2+ global batches each, at most 64)")
    bucket_boundaries: list[int] = opt([], "instead: inclusive upper passage lengths (tokens) of the buckets, "
                                           "e.g. 32 64 128 256")
    same_dataset_batches: bool = opt(False, "draw every global batch from one --train-data file (BGE's "
                                            "same_dataset_within_batch)")
    dataset_weights: list[float] = opt([], "sampling weight per --train-data file or prepared source (needs "
                                           "--same-dataset-batches)")
    sampling_alpha: float = opt(None, "draw each batch's source with probability ∝ rows^α (GTE: 0.5; 1 = by size, "
                                      "0 = uniform), times --dataset-weights if given (needs --same-dataset-batches)")
    dedup_batches: bool = opt(True, "keep repeated query / positive / hard-negative texts out of a global batch "
                                    "(in-batch-negative losses)")
    # loss
    loss: str = opt("infonce", f"one of {', '.join(LOSS_NAMES)}")
    temperature: float = opt(None, "τ in s = cos/τ (infonce, gte, mnrl, distill); default: the loss's paper value "
                                   "(gte 0.01 GTE, infonce 0.02 BGE, mnrl 0.05 = sentence-transformers' scale 20, "
                                   "distill its base's, 0.02 without one); an ST scale s is τ = 1/s")
    gte_directions: list = opt(list(DIRECTIONS), "gte partition terms to include (qd always)")
    gte_exclude_own_group: bool = opt(True, "gte 'dd' term: leave out every passage of the query's own group (as "
                                            "sentence-transformers); --no-gte-exclude-own-group leaves out d_i only")
    distill_base: str = opt("infonce", "distill: contrastive loss added to the KD term: infonce | gte | none")
    distill_weight: float = opt(1.0, "distill: λ, weight of the KD term")
    distill_mode: str = opt("kl", "distill: kl (over the query's group) | m3 (teacher-weighted in-batch CE)")
    teacher_temperature: float = opt(1.0, "distill: τ_t in softmax(teacher_score / τ_t)")
    cross_device: bool = opt(True, "gather in-batch negatives from all processes (exact gradients)")
    loss_tile_size: int = opt(None, "compute the in-batch loss in tiles of N × N similarities (losses/tiled.py: "
                                    "same values and gradients, never the whole batch × batch matrix); default: "
                                    "automatic, see --loss-tile-above")
    loss_tile_above: int = opt(16384, f"without --loss-tile-size: tile the loss (tiles of {DEFAULT_TILE}) once the "
                                      "global batch has more queries than this (0 = never automatically)")
    # optimisation
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
    # output
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


def main(cfg: TrainConfig) -> dict:
    # ------------------------------------------------------------------ setup
    check_options(cfg)
    accelerator, precision = build_accelerator(cfg)
    set_seed(cfg.seed)
    is_main, log = accelerator.is_main_process, accelerator.print
    resume, resumed = find_resume(cfg, log)  # a checkpoint of this same run, or stop now before loading anything
    if is_main:
        claim_output_dir(cfg.output_dir, asdict(cfg), overwrite=cfg.overwrite_output_dir and not resume)

    # ------------------------------------------------------------------ model and loss
    model = load_model(cfg)
    loss_fn, gather = make_loss(cfg, model.dim, accelerator.num_processes, log)  # gather: negatives of all processes

    # ------------------------------------------------------------------ data (the loss's `needs` decide the rows)
    dataset, sampler, loader, group_size = load_data(cfg, model, loss_fn, accelerator)
    check_run_shape(cfg, group_size, loss_fn, accelerator)
    if warning := deepspeed_grad_cache_warning(accelerator, model, cfg.grad_cache_chunk):  # ZeRO-3 too big to hold
        log(f"warning: {warning}")

    # ------------------------------------------------------------------ optimizer and schedule
    batches_per_epoch = common_batch_count(len(loader))  # the same on every process: no hang at an epoch's end
    steps_per_epoch = batches_per_epoch // cfg.gradient_accumulation_steps
    if steps_per_epoch == 0:
        raise SystemExit(f"one epoch has {len(sampler)} batches, fewer than --gradient-accumulation-steps "
                         f"{cfg.gradient_accumulation_steps}")
    total_steps = cfg.max_steps if cfg.max_steps > 0 else steps_per_epoch * cfg.epochs
    optimizer, scheduler = build_optimizer(
        [*model.named_parameters(), *loss_fn.named_parameters(prefix="loss")], lr=cfg.lr,
        weight_decay=cfg.weight_decay, warmup_ratio=cfg.warmup_ratio, total_steps=total_steps)
    if any(True for _ in loss_fn.parameters()):  # (never under DeepSpeed, which wraps exactly one module)
        model, loss_fn, optimizer, scheduler = accelerator.prepare(model, loss_fn, optimizer, scheduler)
    else:
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if is_main and cfg.report_to != "none":
        accelerator.init_trackers("train", config={k: str(v) for k, v in asdict(cfg).items()})
    log(f"{len(dataset)} examples, {len(sampler)} batches/epoch of {cfg.batch_size}×{accelerator.num_processes} "
        f"queries × {group_size} passages; {total_steps} optimizer steps; loss {cfg.loss}"
        f"{' with cross-device negatives' if gather else ''}"
        f"{f'; GradCache chunks of {cfg.grad_cache_chunk}' if cfg.grad_cache_chunk else ''}"
        f"; device {accelerator.device}, precision {precision}")

    # ------------------------------------------------------------------ resume
    step, best, history, start = 0, -math.inf, [], (0, 0)  # start: (epoch, batch) of the first micro-batch
    if resume:  # weights, optimizer, schedule, RNG of every process, and the sampler's place
        step, best, history, start = restore(cfg, accelerator, sampler, resume, resumed, batches_per_epoch)

    # ------------------------------------------------------------------ loop
    window = LogWindow(accelerator, resumed["pending_losses"] if resume else [])
    # non-finite steps skipped (the same on every process), SIGTERM agreed at step boundaries: training/step_guard.py
    guard = StepGuard(accelerator, model, cfg.max_bad_steps, cfg.output_dir, sources=lambda i: dataset.example(i).source,
                      state=resumed.get("guard", {}) if resume else None)
    progress = tqdm(total=total_steps, initial=step, desc="train", disable=not is_main, dynamic_ncols=True)
    model.train()
    for epoch, index, batch in micro_batches(cfg, dataset, sampler, loader, start, batches_per_epoch, accelerator):
        with accelerator.accumulate(model, loss_fn):  # loss_fn too: softmax's classifier is a DDP module of its own
            # embed [B, D] + [B*G, D], gather to [W*B, D] + [W*B*G, D], loss, backward (in chunks with GradCache)
            loss = train_step(accelerator, model, loss_fn, batch, gather, cfg.grad_cache_chunk)
            grad_norm = clip_gradients(accelerator, [model, loss_fn], cfg.max_grad_norm)  # (DeepSpeed: in its step)
            if guard.update_is_finite(loss, grad_norm, batch, step + 1):  # else the update is skipped
                optimizer.step()
                scheduler.step()
            optimizer.zero_grad()
        window.add(loss, batch)
        if not accelerator.sync_gradients:
            continue
        step += 1
        progress.update(1)
        if step % cfg.log_steps == 0 or step == total_steps:
            stats = {**window.close(), "lr": scheduler.get_last_lr()[0], "epoch": epoch}
            progress.set_postfix(loss=f"{stats['loss']:.4f}", lr=f"{stats['lr']:.2e}", pairs_s=f"{stats['pairs_per_s']:.1f}")
            accelerator.log(stats, step=step)
            history.append({"step": step, **stats})
        if cfg.eval_sts and ((cfg.eval_steps and step % cfg.eval_steps == 0) or step == total_steps):
            score = evaluate_sts(accelerator, model, cfg.eval_sts, step, history)
            if score > best:
                best = score
                save_model(accelerator, model, os.path.join(cfg.output_dir, "best"))
        saved = None
        if cfg.save_steps and step < total_steps and (step % cfg.save_steps == 0 or guard.stop_requested):
            saved = save_checkpoint(accelerator, model, optimizer, cfg.output_dir, step, keep=cfg.save_total_limit,
                                    trainer_state={"sampler": sampler.state_dict(batches_consumed=index + 1),
                                                   "history": history, "best": None if best == -math.inf else best,
                                                   "pending_losses": window.pending(), "guard": guard.state_dict(),
                                                   "config": asdict(cfg)})
        if guard.stop_requested and step < total_steps:  # SIGTERM: exit 143 once the checkpoint is written
            guard.exit_after_sigterm(step, saved)
        if step >= total_steps:
            break
    progress.close()
    guard.close()
    guard.check_trained(step)  # every step skipped, or the last --max-bad-steps: exit 1, no model written

    # ------------------------------------------------------------------ save
    save_model(accelerator, model, cfg.output_dir)
    if is_main:
        write_run_record(cfg.output_dir, asdict(cfg), history)  # train_config.json, train_log.json
    accelerator.end_training()
    log(f"saved the model to {cfg.output_dir}")
    return {"history": history, "steps": step, "best_eval": None if best == -math.inf else best}


def find_resume(cfg: TrainConfig, log):
    """(checkpoint folder, its trainer state) for --resume-from-checkpoint, or (None, None); a checkpoint written
    with other settings is refused here, before anything loads."""
    resume = find_checkpoint(cfg.resume_from_checkpoint, cfg.output_dir) if cfg.resume_from_checkpoint else None
    if resume is None:
        if cfg.resume_from_checkpoint:
            log(f"--resume-from-checkpoint latest: no checkpoint in {cfg.output_dir} yet, starting at step 0")
        return None, None
    resumed = read_trainer_state(resume)
    check_same_run(resumed["config"], json.loads(json.dumps(asdict(cfg))), resume)
    return resume, resumed


def restore(cfg: TrainConfig, accelerator, sampler, resume: str, resumed: dict, batches_per_epoch: int):
    """Load a checkpoint into the prepared objects and the sampler -> (step, best, history, (epoch, batch) to start)."""
    state = os.path.join(resume, "state")
    check_random_states(accelerator, state, cfg.allow_inexact_resume)  # accelerate would skip bad ones silently
    accelerator.load_state(state)  # weights, optimizer, schedule, RNG of every process
    check_random_states(accelerator, state, cfg.allow_inexact_resume, restored=True)
    try:
        sampler.load_state_dict(resumed["sampler"])  # refuses other data / buckets / global batch
    except ValueError as e:
        raise SystemExit(f"--resume-from-checkpoint {resume}: {e}") from None
    step, history = resumed["step"], resumed["history"]
    best = -math.inf if resumed["best"] is None else resumed["best"]
    start = (sampler.epoch, sampler.start_batch) if sampler.start_batch < batches_per_epoch else (sampler.epoch + 1, 0)
    accelerator.print(f"resumed from {resume}: step {step}, epoch {start[0]}, batch {start[1]}")
    return step, best, history, start


def micro_batches(cfg: TrainConfig, dataset, sampler, loader, start: tuple, batches_per_epoch: int, accelerator):
    """(epoch, batch index, micro-batch on the device) forever from `start` = (epoch, batch); the sampler and the
    negatives reshuffle each epoch."""
    epoch, first = start
    while True:
        sampler.set_epoch(epoch, first)
        if cfg.same_dataset_batches:
            accelerator.print(sampler.describe_shares(epoch))  # realised share of each file / source this epoch
        dataset.set_epoch(epoch)
        for i, batch in enumerate(loader, first):
            if i == batches_per_epoch:  # a process with more batches than the others stops with them
                break
            yield epoch, i, batch_to_device(batch, accelerator.device)
        epoch, first = epoch + 1, 0


def load_data(cfg: TrainConfig, model: BiEncoder, loss_fn, accelerator):
    """Rows (validated) -> groups of 1 positive + negatives -> the global-batch sampler -> DataLoader.
    Raw files are read and tokenised here; a prepared corpus (scripts/prepare_data.py) is memory-mapped, with its
    token lengths and text hashes read as arrays. -> (dataset, sampler, loader, passages per query)."""
    pair_kind = pair_kind_for(loss_fn.needs)  # labelled sentence pairs (softmax, cosine) or query/passage groups
    group_size = 1 if pair_kind else cfg.group_size
    if pair_kind and cfg.group_size != 1:
        accelerator.print(f"note: --loss {cfg.loss} trains on sentence pairs; --group-size {cfg.group_size} is not used")
    s, needs_scores = model.settings, "teacher_scores" in loss_fn.needs
    # one global batch per step, sliced per process: length buckets, same-file batches, no duplicate texts
    options = dict(batch_size=cfg.batch_size, seed=cfg.seed, rank=accelerator.process_index,
                   world_size=accelerator.num_processes, length_buckets=cfg.length_buckets,
                   num_buckets=cfg.num_buckets, boundaries=cfg.bucket_boundaries,
                   same_dataset=cfg.same_dataset_batches, dataset_weights=cfg.dataset_weights,
                   sampling_alpha=cfg.sampling_alpha, dedup=cfg.dedup_batches and not pair_kind)
    try:
        if is_prepared(cfg.train_data[0]):
            corpus = PreparedCorpus(cfg.train_data[0])
            corpus.check_settings(model.tokenizer, s, pair_kind)  # lengths of this tokenizer, prompts, max lengths
            dataset = PreparedGroupedDataset(corpus, group_size, cfg.seed, needs_scores, label_kind=pair_kind)
            sampler = build_prepared_sampler(corpus, **options)
            accelerator.print(f"prepared corpus {corpus.path}: {len(corpus)} rows from "
                              f"{len(corpus.source_names)} source(s), memory-mapped")
        else:
            examples, report = load_examples(cfg.train_data, pair_kind=pair_kind, score_max=cfg.score_max,
                                             skip_bad_rows=cfg.skip_bad_rows)
            accelerator.print(report.summary())
            if hint := prepare_hint(len(examples), cfg.train_data):
                accelerator.print(hint)
            dataset = GroupedDataset(examples, group_size, cfg.seed, needs_scores=needs_scores)
            sampler = build_train_sampler(examples, model.tokenizer, s, **options, file_names=cfg.train_data,
                                          progress=accelerator.is_main_process)
        description = sampler.describe()  # plans epoch 0: data that cannot form a batch fails here
    except (DataError, ValueError) as e:
        raise SystemExit(f"data error: {e}") from None
    accelerator.print(description)
    # Its own generator: starting an iterator draws a worker seed from it, which must not shift the global RNG
    # that dropout uses (a resumed run starts an iterator mid-epoch).
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers,
                        collate_fn=Collator(model.tokenizer, s.query_max_len, s.passage_max_len, s.query_prompt,
                                            s.passage_prompt),
                        generator=torch.Generator().manual_seed(cfg.seed))
    return dataset, sampler, loader, group_size


def make_loss(cfg: TrainConfig, dim: int, num_processes: int, log):
    """The loss (its paper's τ unless --temperature), tiled when asked or above --loss-tile-above queries
    -> (loss, whether in-batch negatives are gathered from every process)."""
    try:
        loss_fn = build_loss(cfg.loss, dim=dim, temperature=cfg.temperature, gte_directions=cfg.gte_directions,
                          gte_exclude_own_group=cfg.gte_exclude_own_group, distill_base=cfg.distill_base,
                          distill_weight=cfg.distill_weight, distill_mode=cfg.distill_mode,
                          teacher_temperature=cfg.teacher_temperature, group_size=cfg.group_size)
    except ValueError as e:
        raise SystemExit(f"--loss {cfg.loss}: {e}") from None
    if loss_temperature(loss_fn) is not None:
        log(f"loss {cfg.loss}: τ = {loss_temperature(loss_fn):g}{' (its default)' if cfg.temperature is None else ''}")
    gather = loss_fn.in_batch and cfg.cross_device and num_processes > 1
    try:
        tiled = choose_tiling(loss_fn, cfg.loss_tile_size, cfg.loss_tile_above,
                              batch_queries=cfg.batch_size * (num_processes if gather else 1))
    except ValueError as e:
        raise SystemExit(f"--loss-tile-size / --loss-tile-above (--loss {cfg.loss}): {e}") from None
    if tiled is not loss_fn:
        log(f"loss {cfg.loss}: tiled, {tiled.tile_size} × {tiled.tile_size} similarities at a time (losses/tiled.py)")
    return tiled, gather


def check_options(cfg: TrainConfig) -> None:
    """Options that are wrong on their own: stop before anything loads, with one message naming the option."""
    if cfg.loss not in LOSS_NAMES:
        raise SystemExit(f"--loss: unknown loss {cfg.loss!r}; choose one of {', '.join(LOSS_NAMES)}")
    if not cfg.model:
        raise SystemExit("--model is required (a local folder or Hub id)")
    if not cfg.train_data:
        raise SystemExit("--train-data is required")
    def finite(low, inclusive):  # a real number above (or at) low
        return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (
            v >= low if inclusive else v > low)

    def whole(low):
        return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low

    def one_of(choices):
        return lambda v: v in choices, f"one of {', '.join(c for c in choices if c is not None)}"

    rules = {  # option: (allowed?, what it must be)
        **{name: (finite(0, False), "a finite number > 0") for name in ("lr", "teacher_temperature", "score_max")},
        "temperature": (lambda v: v is None or finite(0, False)(v), "a finite number > 0"),
        **{name: (finite(0, True), "a finite number ≥ 0") for name in ("distill_weight", "weight_decay")},
        "max_grad_norm": (finite(0, True), "a finite number ≥ 0 (0 = no clipping)"),
        "warmup_ratio": (lambda v: finite(0, True)(v) and v <= 1, "between 0 and 1"),
        "ddp_timeout": (finite(0, False), "seconds > 0"),
        "seed": (lambda v: whole(0)(v) and v < 2**32, "a whole number from 0 to 2³² − 1 (numpy's seed range)"),
        "max_steps": (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number (≤ 0: --epochs)"),
        "epochs": (lambda v: whole(1)(v) or (whole(0)(v) and cfg.max_steps > 0), "≥ 1 (or set --max-steps)"),
        **{name: (whole(1), "≥ 1") for name in (
            "batch_size", "group_size", "gradient_accumulation_steps", "query_max_len", "passage_max_len",
            "log_steps", "max_bad_steps")},
        **{name: (whole(0), "≥ 0") for name in (
            "grad_cache_chunk", "save_steps", "save_total_limit", "eval_steps", "num_workers", "num_buckets")},
        "pooling": one_of((None, *POOLING_MODES)),
        "mixed_precision": one_of(MIXED_PRECISIONS),
        "attn_implementation": one_of(ATTENTION),
        "report_to": one_of(REPORT_TO),
    }
    for name, (allowed, must_be) in rules.items():
        if not allowed(getattr(cfg, name)):
            raise SystemExit(f"{option_name(cfg, name)} {getattr(cfg, name)}: must be {must_be}")
    if cfg.eval_steps and not cfg.eval_sts:
        raise SystemExit(f"--eval-steps {cfg.eval_steps}: evaluates --eval-sts, which is not set")
    if cfg.deepspeed:
        load_deepspeed_config(cfg.deepspeed)  # readable JSON (build_accelerator reconciles it with the flags)
    # the loss's own options (distill base / mode / group size, gte directions, tiling), on a stand-in dimension
    make_loss(cfg, dim=8, num_processes=int(os.environ.get("WORLD_SIZE", "1")), log=lambda message: None)
    try:
        num_files = len(cfg.train_data)
        if any(is_prepared(p) for p in cfg.train_data):
            if len(cfg.train_data) > 1:
                raise ValueError("a prepared corpus must be the only --train-data (prepare all sources into one "
                                 "corpus: scripts/prepare_data.py --input A B ...)")
            num_files = len(read_manifest(cfg.train_data[0])["sources"])
        else:
            for path in cfg.train_data:
                check_data_path(path)
        check_sampler_options(num_files, cfg.dataset_weights, cfg.same_dataset_batches, cfg.bucket_boundaries,
                              cfg.sampling_alpha)
    except ValueError as e:  # DataError included
        raise SystemExit(f"data error: {e}") from None
    for flag, path in (("--model", cfg.model), ("--from-config", cfg.from_config)):
        if path and not os.path.exists(path):
            if not looks_like_hub_id(path):
                raise SystemExit(f"{flag} {path}: no such folder")
            if hub_offline():
                raise SystemExit(f"{flag} {path}: no such local folder, and the Hub is offline (HF_HUB_OFFLINE is "
                                 f"set), so it cannot be downloaded; pass a local folder")
    check_model_files(cfg)
    if cfg.eval_sts:  # read and checked now, not at the first evaluation after hours of training
        from evaluation.task_files import TaskDataError, TaskFileNotFoundError, read_sts
        try:
            read_sts(cfg.eval_sts)
        except (TaskDataError, TaskFileNotFoundError) as e:
            raise SystemExit(f"--eval-sts: {e}") from None
    check_output_dir(cfg.output_dir, asdict(cfg), cfg.overwrite_output_dir, cfg.resume_from_checkpoint)


def check_model_files(cfg: TrainConfig) -> None:
    """A local model folder has its config, weights and tokenizer files (else transformers builds a tokenizer of a
    few special tokens and every word becomes [UNK]); the max lengths fit the backbone's positions (else the first
    step fails on a tensor size). Reads JSON files only; a Hub id is checked once downloaded (models/checks.py)."""
    try:
        if cfg.from_config:
            check_tokenizer_folder(cfg.model)
        else:
            check_model_folder(cfg.model)
        source = cfg.from_config or cfg.model
        if os.path.isdir(source):
            for note in check_max_lengths(source, query_max_len=cfg.query_max_len,
                                          passage_max_len=cfg.passage_max_len):
                print(f"note: {note}", flush=True)
    except MaxLengthError as e:
        raise SystemExit(f"{option_name(cfg, e.field)} {e.value}: {e.reason}") from None
    except ValueError as e:
        flag = "--from-config" if cfg.from_config and "tokenizer" not in str(e) else "--model"
        raise SystemExit(f"{flag} {e}") from None


def check_run_shape(cfg: TrainConfig, group_size: int, loss_fn, accelerator) -> None:
    """Options that are wrong with this loss, data and launch: stop before training (and say what is unused)."""
    if cfg.cross_device and loss_fn.in_batch and accelerator.num_processes == 1:
        accelerator.print("note: one process, so --cross-device has nothing to gather (in-batch negatives are this "
                          "batch's)")
    sequences = cfg.batch_size * max(group_size, 1)  # the larger side: passages
    if cfg.grad_cache_chunk and cfg.grad_cache_chunk >= sequences:
        raise SystemExit(f"--grad-cache-chunk {cfg.grad_cache_chunk} is not smaller than the batch's "
                         f"{cfg.batch_size} queries × {group_size} passages = {sequences} passages: nothing to "
                         f"chunk; lower it (e.g. {max(1, sequences // 4)}) or drop the flag")
    if uses_deepspeed(accelerator) and any(True for _ in loss_fn.parameters()):
        raise SystemExit(f"--loss {cfg.loss} has trainable parameters outside the encoder, which the DeepSpeed "
                         f"engine does not hold; train it without DeepSpeed")


def load_model(cfg: TrainConfig) -> BiEncoder:
    settings = dict(pooling=cfg.pooling, normalize=cfg.normalize, query_prompt=cfg.query_prompt,
                    passage_prompt=cfg.passage_prompt, query_max_len=cfg.query_max_len,
                    passage_max_len=cfg.passage_max_len)
    if cfg.from_config:
        model = BiEncoder.from_config(cfg.from_config, cfg.model, cfg.attn_implementation, **settings)
    else:
        model = BiEncoder.from_pretrained(cfg.model, cfg.attn_implementation, **settings)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def evaluate_sts(accelerator, model, path: str, step: int, history: list) -> float:
    """Spearman of cosine vs gold on an STS file, computed on the main process, shared with all and logged."""
    from evaluation.fast import sts_spearman

    score = torch.tensor(0.0, device=accelerator.device)
    if accelerator.is_main_process:
        score += sts_spearman(accelerator.unwrap_model(model), path)
    accelerator.wait_for_everyone()
    score = accelerator.reduce(score, reduction="sum").item()
    accelerator.log({"eval/sts_spearman": score}, step=step)
    history.append({"step": step, "eval_sts_spearman": score})
    accelerator.print(f"step {step}: STS Spearman {score:.4f} on {path}")
    return score


def _strip_launcher_args(argv: list[str]) -> list[str]:
    """The `deepspeed` launcher appends --local_rank=N; the rank is also in the environment (LOCAL_RANK)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--local_rank", "--local-rank"):
            skip = True
        elif not a.startswith(("--local_rank=", "--local-rank=")):
            out.append(a)
    return out


if __name__ == "__main__":
    import sys

    main(parse_config(TrainConfig, _strip_launcher_args(sys.argv[1:]), description=__doc__.split("\n")[0]))
