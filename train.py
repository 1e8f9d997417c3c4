"""Train a text-embedding bi-encoder: config → data → model → loss → optimizer → loop → save.

    python train.py --model PATH_OR_ID --train-data data.jsonl --loss gte --output-dir out
    torchrun --nproc_per_node 8 train.py ...      (same script; in-batch negatives are gathered across GPUs)
    torchrun --nproc_per_node 8 train.py ... --deepspeed configs/deepspeed/zero2.json --grad-cache-chunk 64

The finished model is written to --output-dir (safetensors, tokenizer, sentence-transformers files);
checkpoints go to --output-dir/checkpoint-<step>/, and the same command plus `--resume-from-checkpoint latest`
continues a killed run exactly. Run `python train.py --help` for every option.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import torch
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cli_config import (ConfigError, build_config, describe_error, flat, option_name, parse_config, part,
                        strip_launcher_args)
from data.batch_planner import check_sampler_options
from data.collator import Collator
from data.config import DataConfig
from data.examples import check_data_paths, load_examples
from data.groups import GroupedDataset, PreparedGroupedDataset
from data.prepared import PreparedCorpus, is_prepared, prepare_hint, read_manifest
from data.tables import DataError, OptionError
from data.train_sampler import build_prepared_sampler, build_train_sampler
from losses.config import LossConfig
from models.bi_encoder import BiEncoder
from models.checks import (MaxLengthError, check_max_lengths, check_model_folder, check_model_sources,
                           check_tokenizer_folder, embedding_width)
from models.config import ModelConfig, build_model, check_lora_targets
from training.accelerator import build_accelerator, finish, uses_deepspeed
from training.checkpoint import save_checkpoint, save_model, write_run_record
from training.common_batch_count import common_batch_count
from training.config import OptimConfig, OutputConfig
from training.deepspeed_config import load_deepspeed_config
from training.grad_cache import deepspeed_grad_cache_warning
from training.log_window import LogWindow
from training.optimizer import build_optimizer
from training.output_dir import check_output_dir, claim_output_dir
from training.resume import find_resume, restore
from training.step import batch_to_device, train_step
from training.step_guard import StepGuard, clip_gradients


@dataclass
class TrainConfig:
    """Every option of a run, by the part that owns it; each option is one flat flag / YAML key (cli_config.py)."""

    model: ModelConfig = part(ModelConfig)  # backbone, pooling, prompts, lengths (models/config.py)
    data: DataConfig = part(DataConfig)  # files, groups, batches (data/config.py)
    loss: LossConfig = part(LossConfig)  # the loss, its τ and options, gather, tiling (losses/config.py)
    optim: OptimConfig = part(OptimConfig)  # batch, steps, schedule, precision, launch (training/config.py)
    output: OutputConfig = part(OutputConfig)  # output folder, checkpoints, logs, evaluation (training/config.py)

    @classmethod
    def of(cls, **options) -> "TrainConfig":
        """From flat keys, as on the command line: TrainConfig.of(model="m", train_data=["a.jsonl"], lr=1e-4)."""
        return build_config(cls, options)


def main(cfg: TrainConfig) -> dict:
    # ------------------------------------------------------------------ setup
    check_options(cfg)
    o = cfg.optim
    accelerator, precision = build_accelerator(o, cfg.output)
    set_seed(o.seed)
    is_main, log = accelerator.is_main_process, accelerator.print
    resume, resumed = find_resume(cfg.output, flat(cfg), log)  # a checkpoint of this run, or stop before loading
    if is_main:
        claim_output_dir(cfg.output.output_dir, flat(cfg), overwrite=cfg.output.overwrite_output_dir and not resume)

    # ------------------------------------------------------------------ model and loss
    model = load_model(cfg, log)  # the family's attention, padding and EOS; LoRA adapters when --lora-rank
    # gather: in-batch negatives of all processes; model.settings record the Matryoshka widths, saved with it
    loss_fn, gather = make_loss(cfg, model.dim, accelerator.num_processes, log, model.settings)

    # ------------------------------------------------------------------ data (the rows the loss registered)
    dataset, sampler, loader, group_size = load_data(cfg, model, accelerator)
    check_run_shape(cfg, group_size, loss_fn, accelerator)
    if warning := deepspeed_grad_cache_warning(accelerator, model, o.grad_cache_chunk):  # ZeRO-3 too big to hold
        log(f"warning: {warning}")

    # ------------------------------------------------------------------ optimizer and schedule
    batches_per_epoch = common_batch_count(len(loader))  # the same on every process: no hang at an epoch's end
    steps_per_epoch = batches_per_epoch // o.gradient_accumulation_steps
    if steps_per_epoch == 0:
        raise SystemExit(f"one epoch has {len(sampler)} batches, fewer than --gradient-accumulation-steps "
                         f"{o.gradient_accumulation_steps}")
    total_steps = o.max_steps if o.max_steps > 0 else steps_per_epoch * o.epochs
    optimizer, scheduler = build_optimizer(
        [*model.named_parameters(), *loss_fn.named_parameters(prefix="loss")], lr=o.lr,
        weight_decay=o.weight_decay, warmup_ratio=o.warmup_ratio, total_steps=total_steps)
    if any(True for _ in loss_fn.parameters()):  # (never under DeepSpeed, which wraps exactly one module)
        model, loss_fn, optimizer, scheduler = accelerator.prepare(model, loss_fn, optimizer, scheduler)
    else:
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if is_main and cfg.output.report_to != "none":
        accelerator.init_trackers("train", config={k: str(v) for k, v in flat(cfg).items()})
    log(f"{len(dataset)} examples, {len(sampler)} batches/epoch of {o.batch_size}×{accelerator.num_processes} "
        f"queries × {group_size} passages; {total_steps} optimizer steps; loss {cfg.loss.name}"
        f"{' with cross-device negatives' if gather else ''}"
        f"{f'; GradCache chunks of {o.grad_cache_chunk}' if o.grad_cache_chunk else ''}"
        f"; device {accelerator.device}, precision {precision}")

    # ------------------------------------------------------------------ resume
    step, best, history, start = 0, -math.inf, [], (0, 0)  # start: (epoch, batch) of the first micro-batch
    if resume:  # weights, optimizer, schedule, RNG of every process, and the sampler's place
        step, best, history, start = restore(accelerator, sampler, resume, resumed, batches_per_epoch,
                                             cfg.output.allow_inexact_resume)

    # ------------------------------------------------------------------ loop
    out = cfg.output
    window = LogWindow(accelerator, resumed["pending_losses"] if resume else [])
    # non-finite steps skipped (the same on every process), SIGTERM agreed at step boundaries: training/step_guard.py
    guard = StepGuard(accelerator, model, o.max_bad_steps, out.output_dir, sources=lambda i: dataset.example(i).source,
                      state=resumed.get("guard", {}) if resume else None)
    progress = tqdm(total=total_steps, initial=step, desc="train", disable=not is_main, dynamic_ncols=True)
    model.train()
    for epoch, index, batch in micro_batches(cfg, dataset, sampler, loader, start, batches_per_epoch, accelerator):
        with accelerator.accumulate(model, loss_fn):  # loss_fn too: softmax's classifier is a DDP module of its own
            # embed [B, D] + [B*G, D], gather to [W*B, D] + [W*B*G, D], loss, backward (in chunks with GradCache)
            loss = train_step(accelerator, model, loss_fn, batch, gather, o.grad_cache_chunk)
            grad_norm = clip_gradients(accelerator, [model, loss_fn], o.max_grad_norm)  # (DeepSpeed: in its step)
            if guard.update_is_finite(loss, grad_norm, batch, step + 1):  # else the update is skipped
                optimizer.step()
                scheduler.step()
            optimizer.zero_grad()
        window.add(loss, batch)
        if not accelerator.sync_gradients:
            continue
        step += 1
        progress.update(1)
        if step % out.log_steps == 0 or step == total_steps:
            stats = {**window.close(), "lr": scheduler.get_last_lr()[0], "epoch": epoch}
            progress.set_postfix(loss=f"{stats['loss']:.4f}", lr=f"{stats['lr']:.2e}",
                                 pairs_s=f"{stats['pairs_per_s']:.1f}")
            accelerator.log(stats, step=step)
            history.append({"step": step, **stats})
        if out.eval_sts and ((out.eval_steps and step % out.eval_steps == 0) or step == total_steps):
            score = evaluate_sts(accelerator, model, out.eval_sts, step, history)
            if score > best:
                best = score
                save_model(accelerator, model, os.path.join(out.output_dir, "best"), merge=cfg.model.merge_lora)
        saved = None
        if out.save_steps and step < total_steps and (step % out.save_steps == 0 or guard.stop_requested):
            saved = save_checkpoint(accelerator, model, optimizer, out.output_dir, step, keep=out.save_total_limit,
                                    trainer_state={"sampler": sampler.state_dict(batches_consumed=index + 1),
                                                   "history": history, "best": None if best == -math.inf else best,
                                                   "pending_losses": window.pending(), "guard": guard.state_dict(),
                                                   "config": flat(cfg)})
        if guard.stop_requested and step < total_steps:  # SIGTERM: exit 143 once the checkpoint is written
            guard.exit_after_sigterm(step, saved)
        if step >= total_steps:
            break
    progress.close()
    guard.close()
    guard.check_trained(step)  # every step skipped, or the last --max-bad-steps: exit 1, no model written

    # ------------------------------------------------------------------ save
    save_model(accelerator, model, out.output_dir, merge=cfg.model.merge_lora)  # LoRA: the adapter, or merged
    if is_main:
        write_run_record(out.output_dir, flat(cfg), history)  # train_config.json, train_log.json
    finish(accelerator)
    log(f"saved the model to {out.output_dir}")
    return {"history": history, "steps": step, "best_eval": None if best == -math.inf else best}


def load_model(cfg: TrainConfig, log) -> BiEncoder:
    """build_model (models/config.py), its refusals said with the flag."""
    try:
        return build_model(cfg.model, log)
    except ConfigError as e:
        raise SystemExit(describe_error(cfg, e)) from None


def micro_batches(cfg: TrainConfig, dataset, sampler, loader, start: tuple, batches_per_epoch: int, accelerator):
    """(epoch, batch index, micro-batch on the device) forever from `start` = (epoch, batch); the sampler and the
    negatives reshuffle each epoch."""
    epoch, first = start
    while True:
        sampler.set_epoch(epoch, first)
        if cfg.data.same_dataset_batches:
            accelerator.print(sampler.describe_shares(epoch))  # realised share of each file / source this epoch
        dataset.set_epoch(epoch)
        batches = enumerate(loader, first)
        while True:
            try:
                i, batch = next(batches)
            except StopIteration:
                break
            except DataError as e:  # a row that fails to read (a damaged shard), named with its file
                raise data_error(cfg, e, worker_message(e)) from None
            if i == batches_per_epoch:  # a process with more batches than the others stops with them
                break
            yield epoch, i, batch_to_device(batch, accelerator.device)
        epoch, first = epoch + 1, 0


def worker_message(error: Exception) -> str:
    """A DataLoader worker's error re-raised here carries the worker's traceback: its last line, without the
    exception's class name."""
    last = str(error).strip().splitlines()[-1]
    return re.sub(r"^[\w.]+Error: ", "", last)


def load_data(cfg: TrainConfig, model: BiEncoder, accelerator):
    """Rows (validated) -> groups of 1 positive + negatives -> the global-batch sampler -> DataLoader.
    Raw files are read and tokenised here; a prepared corpus (scripts/prepare_data.py) is memory-mapped, with its
    token lengths and text hashes read as arrays. -> (dataset, sampler, loader, passages per query)."""
    d, rows = cfg.data, cfg.loss.spec.rows  # the rows the loss registered (data/row_kind.py)
    group_size = 1 if rows.is_pairs else d.group_size
    if rows.is_pairs and d.group_size != 1:
        accelerator.print(f"note: --loss {cfg.loss.name} trains on sentence pairs; --group-size {d.group_size} is "
                          "not used")
    s, seed = model.settings, cfg.optim.seed
    text_format = s.text_format(rows.formats_passages(cfg.model.format_passages))  # prompts / instruction format
    # one global batch per step, sliced per process: length buckets, same-file batches, no duplicate texts
    options = dict(batch_size=cfg.optim.batch_size, seed=seed, rank=accelerator.process_index,
                   world_size=accelerator.num_processes, length_buckets=d.length_buckets,
                   num_buckets=d.num_buckets, boundaries=d.bucket_boundaries,
                   same_dataset=d.same_dataset_batches, dataset_weights=d.dataset_weights,
                   sampling_alpha=d.sampling_alpha, dedup=d.dedup_batches and not rows.is_pairs)
    try:
        if is_prepared(d.train_data[0]):
            corpus = PreparedCorpus(d.train_data[0])
            # the run's tokenizer (EOS included), prompts, instruction format and max lengths
            corpus.check_settings(model.tokenizer, s, rows, cfg.model.format_passages)
            dataset = PreparedGroupedDataset(corpus, group_size, seed, rows)
            sampler = build_prepared_sampler(corpus, **options)
            accelerator.print(f"prepared corpus {corpus.path}: {len(corpus)} rows from "
                              f"{len(corpus.source_names)} source(s), memory-mapped")
        else:
            examples, report = load_examples(d.train_data, rows, score_max=d.score_max, skip_bad_rows=d.skip_bad_rows)
            accelerator.print(report.summary())
            if not text_format.takes_instruction and (bad := next((ex for ex in examples if ex.prompt), None)):
                raise DataError(f"{bad.source}: field 'prompt' {bad.prompt!r}: --query-instruction-format "
                                f"{text_format.instruction_format!r} has one {{}} slot (the text), so a row's prompt "
                                "has no place; give the format two slots (instruction, text)")
            if hint := prepare_hint(len(examples), d.train_data):
                accelerator.print(hint)
            dataset = GroupedDataset(examples, group_size, seed, rows)
            sampler = build_train_sampler(examples, model.tokenizer, s, **options, file_names=d.train_data,
                                          progress=accelerator.is_main_process, text_format=text_format)
        description = sampler.describe()  # plans epoch 0: data that cannot form a batch fails here
    except (DataError, ValueError) as e:
        raise data_error(cfg, e) from None
    accelerator.print(description)
    # Its own generator: starting an iterator draws a worker seed from it, which must not shift the global RNG
    # that dropout uses (a resumed run starts an iterator mid-epoch).
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=d.num_workers,
                        collate_fn=Collator(model.tokenizer, s.query_max_len, s.passage_max_len,
                                            text_format=text_format),
                        generator=torch.Generator().manual_seed(seed))
    return dataset, sampler, loader, group_size


def make_loss(cfg: TrainConfig, dim: int, num_processes: int, log, settings=None):
    """The registered loss (its paper's τ unless --temperature), tiled when asked or above --loss-tile-above queries,
    inside the Matryoshka wrapper with --matryoshka-dims -> (loss, whether in-batch negatives are gathered from every
    process). `settings`: the model's EncoderSettings, which record the Matryoshka widths (saved with the model)."""
    loss_cfg = cfg.loss
    gathers = loss_cfg.cross_device and num_processes > 1
    try:
        loss_fn, dense = loss_cfg.build(dim, group_size=cfg.data.group_size,
                                        batch_queries=cfg.optim.batch_size * (num_processes if gathers else 1))
    except ConfigError as e:
        raise SystemExit(describe_error(cfg, e)) from None
    for note in (loss_cfg.temperature_note(dense), loss_cfg.matryoshka_note(dim)):
        if note:
            log(note)
    if settings is not None:
        settings.matryoshka_dims = sorted(loss_cfg.matryoshka_dims, reverse=True)
    if loss_fn is not dense:
        log(f"loss {loss_cfg.name}: tiled, {loss_fn.tile_size} × {loss_fn.tile_size} similarities at a time "
            "(losses/tiled.py)")
    return loss_fn, gathers and dense.in_batch


def check_options(cfg: TrainConfig) -> None:
    """Options that are wrong on their own: stop before anything loads, with one message naming the option (and the
    YAML file and line it came from). Each part checks its own options; what spans parts is checked here."""
    try:
        for part_config in (cfg.model, cfg.data, cfg.optim, cfg.output):
            part_config.check()
        cfg.loss.check(group_size=cfg.data.group_size)
    except ConfigError as e:
        raise SystemExit(describe_error(cfg, e)) from None
    if cfg.optim.deepspeed:
        load_deepspeed_config(cfg.optim.deepspeed)  # readable JSON (build_accelerator reconciles it with the flags)
    # the loss with its tiling and Matryoshka widths, on a stand-in dimension (the model's is checked below)
    make_loss(cfg, dim=max([8, *cfg.loss.matryoshka_dims]), num_processes=int(os.environ.get("WORLD_SIZE", "1")),
              log=lambda message: None)
    check_data_options(cfg)
    check_model_files(cfg)
    if cfg.output.eval_sts:  # read and checked now, not at the first evaluation after hours of training
        from evaluation.task_files import TaskDataError, TaskFileNotFoundError, read_sts
        try:
            read_sts(cfg.output.eval_sts)
        except (TaskDataError, TaskFileNotFoundError) as e:
            raise SystemExit(f"--eval-sts: {e}") from None
    check_output_dir(cfg.output.output_dir, flat(cfg), cfg.output.overwrite_output_dir,
                     cfg.output.resume_from_checkpoint)


def check_data_options(cfg: TrainConfig) -> None:
    """The training files exist (each once) and the sampling options fit them (a prepared corpus: its sources)."""
    d = cfg.data
    try:
        num_files = len(d.train_data)
        if any(is_prepared(p) for p in d.train_data):
            if len(d.train_data) > 1:
                raise ValueError("a prepared corpus must be the only --train-data (prepare all sources into one "
                                 "corpus: scripts/prepare_data.py --input A B ...)")
            num_files = len(read_manifest(d.train_data[0])["sources"])
        else:
            check_data_paths(d.train_data)  # also: the same file given twice
        check_sampler_options(num_files, d.dataset_weights, d.same_dataset_batches, d.bucket_boundaries,
                              d.sampling_alpha)
    except ValueError as e:  # DataError included
        raise data_error(cfg, e) from None


DATA_FIELD_KEYS = {"same_dataset": "same_dataset_batches", "boundaries": "bucket_boundaries", "dedup": "dedup_batches"}


def data_error(cfg: TrainConfig, error: Exception, text: str | None = None) -> SystemExit:
    """A data/ error as train.py says it: `data error: ...`, the options it names (OptionError: by field) shown as
    their flags, or as the YAML file and line they came from."""
    if isinstance(error, OptionError):
        text = error.text({f: option_name(cfg, DATA_FIELD_KEYS.get(f, f)) for f in error.fields})
    return SystemExit(f"data error: {text or error}")


def check_model_files(cfg: TrainConfig) -> None:
    """--model / --from-config exist (or can be a Hub id while online); a local model folder has its config, weights
    and tokenizer files (else transformers builds a tokenizer of a few special tokens and every word becomes [UNK]);
    the max lengths fit the backbone's positions (else the first step fails on a tensor size), the Matryoshka widths
    its embedding width. Reads JSON files only; a Hub id is checked once downloaded (models/checks.py)."""
    m = cfg.model
    check_model_sources(m.backbone, m.from_config)
    try:
        if m.from_config:
            check_tokenizer_folder(m.backbone)
        else:
            check_model_folder(m.backbone)
        source = m.from_config or m.backbone
        if os.path.isdir(source):
            for note in check_max_lengths(source, query_max_len=m.query_max_len, passage_max_len=m.passage_max_len):
                print(f"note: {note}", flush=True)
            cfg.loss.check_matryoshka(embedding_width(source))  # --matryoshka-dims within the model's width
            check_lora_targets(m)  # on an empty (meta) copy of the architecture: no weights read
    except MaxLengthError as e:
        raise SystemExit(f"{option_name(cfg, e.field)} {e.value}: {e.reason}") from None
    except ConfigError as e:
        raise SystemExit(describe_error(cfg, e)) from None
    except ValueError as e:
        flag = "--from-config" if m.from_config and "tokenizer" not in str(e) else "--model"
        raise SystemExit(f"{flag} {e}") from None


def check_run_shape(cfg: TrainConfig, group_size: int, loss_fn, accelerator) -> None:
    """Options that are wrong with this loss, data and launch: stop before training (and say what is unused)."""
    o = cfg.optim
    if cfg.loss.cross_device and loss_fn.in_batch and accelerator.num_processes == 1:
        accelerator.print("note: one process, so --cross-device has nothing to gather (in-batch negatives are this "
                          "batch's)")
    sequences = o.batch_size * max(group_size, 1)  # the larger side: passages
    if o.grad_cache_chunk and o.grad_cache_chunk >= sequences:
        raise SystemExit(f"--grad-cache-chunk {o.grad_cache_chunk} is not smaller than the batch's "
                         f"{o.batch_size} queries × {group_size} passages = {sequences} passages: nothing to "
                         f"chunk; lower it (e.g. {max(1, sequences // 4)}) or drop the flag")
    if uses_deepspeed(accelerator) and any(True for _ in loss_fn.parameters()):
        raise SystemExit(f"--loss {cfg.loss.name} has trainable parameters outside the encoder, which the DeepSpeed "
                         f"engine does not hold; train it without DeepSpeed")


def evaluate_sts(accelerator, model, path: str, step: int, history: list) -> float:
    """Spearman of cosine vs gold on an STS file, computed on the main process, shared with all and logged."""
    from evaluation.training_sts import sts_spearman

    score = torch.tensor(0.0, device=accelerator.device)
    if accelerator.is_main_process:
        score += sts_spearman(accelerator.unwrap_model(model), path)
    accelerator.wait_for_everyone()
    score = accelerator.reduce(score, reduction="sum").item()
    accelerator.log({"eval/sts_spearman": score}, step=step)
    history.append({"step": step, "eval_sts_spearman": score})
    accelerator.print(f"step {step}: STS Spearman {score:.4f} on {path}")
    return score


if __name__ == "__main__":
    import sys

    main(parse_config(TrainConfig, strip_launcher_args(sys.argv[1:]), description=__doc__.split("\n")[0]))
