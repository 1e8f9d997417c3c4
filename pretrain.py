"""Pretrain an encoder by masked auto-encoding (RetroMAE: BGE's first stage), then fine-tune it with train.py.

    python pretrain.py --model bert-base-uncased --train-data corpus.jsonl wiki.txt --max-steps 10000 --output-dir mae
    python pretrain.py --model TOKENIZER --from-config configs/experiments/small-bert.json ...     (random weights)
    torchrun --nproc_per_node 8 pretrain.py ... --deepspeed configs/deepspeed/zero2.json
    python train.py --model mae --train-data pairs.jsonl ...      (the contrastive stage: pooling cls is recorded)

The output is the encoder alone (no decoder, no MLM head), with pooling cls. Checkpoints, exact resume after a kill
(`--resume-from-checkpoint latest`), SIGTERM, skipped non-finite steps, DeepSpeed and the logs are train.py's own
(training/). Run `python pretrain.py --help` for every option; the method is in pretraining/.

A separate entry point, not `train.py --objective retromae`: the two share the launch and the loop's machinery
(training/), but nothing between the data and the loss — train.py reads rows of queries and passages, plans
batches without duplicate texts, embeds both sides, gathers negatives across processes, picks a registered
contrastive loss and may run GradCache; pretraining reads raw texts, masks them, and scores a decoder's logits.
One main with both would branch at every stage and no longer read top to bottom.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial

import torch
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cli_config import (ConfigError, build_config, describe_error, flat, option_name, parse_config, part,
                        strip_launcher_args)
from data.tables import DataError, OptionError
from models.checks import (MaxLengthError, check_max_lengths, check_model_folder, check_model_sources,
                           check_tokenizer_folder)
from pretraining.batches import MaskedTexts, build_text_sampler, collate
from pretraining.config import MAEConfig, MAEModelConfig, TextDataConfig
from pretraining.masking import MaskingVocabulary
from pretraining.model import build_mae_model
from pretraining.objective import mae_loss
from pretraining.prepared import is_prepared_texts, open_prepared_texts
from pretraining.texts import source_file, tokenize_texts
from training.accelerator import build_accelerator, finish
from training.checkpoint import save_checkpoint, save_model, write_run_record
from training.common_batch_count import common_batch_count
from training.config import OptimConfig, OutputConfig
from training.deepspeed_config import load_deepspeed_config
from training.log_window import LogWindow
from training.optimizer import build_optimizer
from training.output_dir import check_output_dir, claim_output_dir
from training.resume import find_resume, restore
from training.step import batch_to_device
from training.step_guard import StepGuard, clip_gradients


@dataclass
class PretrainConfig:
    """Every option of a pretraining run, by part; each option is one flat flag / YAML key (cli_config.py)."""

    model: MAEModelConfig = part(MAEModelConfig)  # model or config + tokenizer, max length (pretraining/config.py)
    data: TextDataConfig = part(TextDataConfig)  # text sources, batching (pretraining/config.py)
    mae: MAEConfig = part(MAEConfig)  # objective, mask ratios, DupMAE term (pretraining/config.py)
    optim: OptimConfig = part(lambda: OptimConfig(lr=1e-4))  # batch, steps, schedule, launch (training/config.py)
    output: OutputConfig = part(OutputConfig)  # output folder, checkpoints, logs (training/config.py)

    @classmethod
    def of(cls, **options) -> "PretrainConfig":
        return build_config(cls, options)


def main(cfg: PretrainConfig) -> dict:
    # ------------------------------------------------------------------ setup
    check_options(cfg)
    o, out, mae = cfg.optim, cfg.output, cfg.mae
    accelerator, precision = build_accelerator(o, out)
    set_seed(o.seed)
    is_main, log = accelerator.is_main_process, accelerator.print
    resume, resumed = find_resume(out, flat(cfg), log)  # a checkpoint of this run, or stop before loading
    if is_main:
        claim_output_dir(out.output_dir, flat(cfg), overwrite=out.overwrite_output_dir and not resume)

    # ------------------------------------------------------------------ model: encoder + MLM head (+ decoder)
    m = cfg.model
    model = build_mae_model(m.backbone, m.from_config, objective=mae.objective, max_len=m.max_len,
                            bow=mae.bow_weight > 0, attn_implementation=m.attn_implementation,
                            dtype=None if m.dtype == "auto" else getattr(torch, m.dtype),
                            gradient_checkpointing=m.gradient_checkpointing, log=log)

    # ------------------------------------------------------------------ data: texts -> masked items -> batches
    dataset, sampler, loader = load_texts(cfg, model, accelerator)
    batches_per_epoch = common_batch_count(len(loader))
    steps_per_epoch = batches_per_epoch // o.gradient_accumulation_steps
    if steps_per_epoch == 0:
        raise SystemExit(f"one epoch has {len(sampler)} batches, fewer than --gradient-accumulation-steps "
                         f"{o.gradient_accumulation_steps}")
    total_steps = o.max_steps if o.max_steps > 0 else steps_per_epoch * o.epochs

    # ------------------------------------------------------------------ optimizer and schedule
    optimizer, scheduler = build_optimizer(model.named_parameters(), lr=o.lr, weight_decay=o.weight_decay,
                                           warmup_ratio=o.warmup_ratio, total_steps=total_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if is_main and out.report_to != "none":
        accelerator.init_trackers("pretrain", config={k: str(v) for k, v in flat(cfg).items()})
    log(f"{len(dataset)} texts, {len(sampler)} batches/epoch of {o.batch_size}×{accelerator.num_processes}; "
        f"{total_steps} optimizer steps; objective {mae.objective} (encoder masks {mae.encoder_ratio:g}"
        f"{f', decoder rows {mae.decoder_ratio:g}' if mae.decoder_ratio else ''}"
        f"{f', bag of words × {mae.bow_weight:g}' if mae.bow_weight else ''}); device {accelerator.device}, "
        f"precision {precision}")

    # ------------------------------------------------------------------ resume
    step, history, start = 0, [], (0, 0)
    if resume:  # weights, optimizer, schedule, RNG of every process, and the sampler's place
        step, _, history, start = restore(accelerator, sampler, resume, resumed, batches_per_epoch,
                                          out.allow_inexact_resume)

    # ------------------------------------------------------------------ loop
    pending = resumed["pending_losses"] if resume else {}
    window = LogWindow(accelerator, pending.get("loss", []), unit="texts")
    terms = {k: LogWindow(accelerator, pending.get(k, [])) for k in ("encoder_loss", "decoder_loss", "bow_loss")}
    guard = StepGuard(accelerator, model, o.max_bad_steps, out.output_dir, sources=dataset.where,
                      state=resumed.get("guard", {}) if resume else None)
    progress = tqdm(total=total_steps, initial=step, desc="pretrain", disable=not is_main, dynamic_ncols=True)
    model.train()
    for epoch, index, batch in micro_batches(cfg, dataset, sampler, loader, start, batches_per_epoch, accelerator):
        with accelerator.accumulate(model):
            with accelerator.autocast():
                outputs = model(batch)  # logits at the encoder's masked positions and the decoder's rows
            loss, parts = mae_loss(outputs, mae.bow_weight)
            accelerator.backward(loss)
            grad_norm = clip_gradients(accelerator, [model], o.max_grad_norm)  # (DeepSpeed: in its step)
            if guard.update_is_finite(loss.detach(), grad_norm, batch, step + 1):  # else the update is skipped
                optimizer.step()
                scheduler.step()
            optimizer.zero_grad()
        window.add_counts(loss.detach(), len(batch["index"]), int(batch["attention_mask"].sum()))
        for name, value in parts.items():
            terms[name].add_counts(value.detach(), 0, 0)
        if not accelerator.sync_gradients:
            continue
        step += 1
        progress.update(1)
        if step % out.log_steps == 0 or step == total_steps:
            stats = {**window.close(), **{k: w.close()["loss"] for k, w in terms.items() if w.losses},
                     "lr": scheduler.get_last_lr()[0], "epoch": epoch}
            progress.set_postfix(loss=f"{stats['loss']:.4f}", lr=f"{stats['lr']:.2e}")
            accelerator.log(stats, step=step)
            history.append({"step": step, **stats})
        saved = None
        if out.save_steps and step < total_steps and (step % out.save_steps == 0 or guard.stop_requested):
            pending = {"loss": window.pending(), **{k: w.pending() for k, w in terms.items()}}
            saved = save_checkpoint(accelerator, model, optimizer, out.output_dir, step, keep=out.save_total_limit,
                                    trainer_state={"sampler": sampler.state_dict(batches_consumed=index + 1),
                                                   "history": history, "best": None, "pending_losses": pending,
                                                   "guard": guard.state_dict(), "config": flat(cfg)})
        if guard.stop_requested and step < total_steps:  # SIGTERM: exit 143 once the checkpoint is written
            guard.exit_after_sigterm(step, saved)
        if step >= total_steps:
            break
    progress.close()
    guard.close()
    guard.check_trained(step)  # every step skipped, or the last --max-bad-steps: exit 1, no model written

    # ------------------------------------------------------------------ save the encoder alone
    save_model(accelerator, model, out.output_dir)  # the backbone's keys only (training/checkpoint.py)
    if is_main:
        write_run_record(out.output_dir, flat(cfg), history)
    finish(accelerator)  # trackers closed, a last barrier, the process group torn down (as train.py)
    log(f"saved the encoder to {out.output_dir} (pooling cls); fine-tune it with train.py --model {out.output_dir}")
    return {"history": history, "steps": step}


def load_texts(cfg: PretrainConfig, model, accelerator):
    """Texts (raw files tokenised here, or a prepared text corpus memory-mapped) -> masked items -> the global-batch
    sampler -> DataLoader. -> (dataset, sampler, loader)."""
    d, m, seed = cfg.data, cfg.model, cfg.optim.seed
    try:
        if is_prepared_texts(d.train_data[0]):
            texts = open_prepared_texts(d.train_data[0], model.tokenizer, m.max_len, d.text_field)
            accelerator.print(f"prepared text corpus {d.train_data[0]}: memory-mapped")
        else:
            texts = tokenize_texts(d.train_data, model.tokenizer, m.max_len, d.text_field,
                                   progress=accelerator.is_main_process)
        accelerator.print(texts.report.summary())
        sampler = build_text_sampler(texts, batch_size=cfg.optim.batch_size, seed=seed,
                                     rank=accelerator.process_index, world_size=accelerator.num_processes,
                                     length_buckets=d.length_buckets, num_buckets=d.num_buckets,
                                     same_dataset=d.same_dataset_batches)
        description = sampler.describe()  # plans epoch 0
    except (DataError, ValueError) as e:
        raise data_error(cfg, e) from None
    accelerator.print(description)
    vocab = MaskingVocabulary.of(model.tokenizer)
    if vocab.warning:
        accelerator.print(f"warning: {vocab.warning}")
    dataset = MaskedTexts(texts, vocab, seed=seed, encoder_ratio=cfg.mae.encoder_ratio,
                          decoder_ratio=cfg.mae.decoder_ratio)
    # its own generator: starting an iterator must not draw from the global RNG that dropout uses
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=d.num_workers,
                        collate_fn=partial(collate, pad_id=model.tokenizer.pad_token_id or 0),
                        generator=torch.Generator().manual_seed(seed))
    return dataset, sampler, loader


def micro_batches(cfg: PretrainConfig, dataset, sampler, loader, start: tuple, batches_per_epoch: int, accelerator):
    """(epoch, batch index, micro-batch on the device) forever from `start` = (epoch, batch); masks are redrawn
    each epoch."""
    epoch, first = start
    while True:
        sampler.set_epoch(epoch, first)
        dataset.set_epoch(epoch)
        batches = enumerate(loader, first)
        while True:
            try:
                i, batch = next(batches)
            except StopIteration:
                break
            except DataError as e:
                raise data_error(cfg, e, str(e).strip().splitlines()[-1]) from None
            if i == batches_per_epoch:
                break
            yield epoch, i, batch_to_device(batch, accelerator.device)
        epoch, first = epoch + 1, 0


def data_error(cfg: PretrainConfig, error: Exception, text: str | None = None) -> SystemExit:
    if isinstance(error, OptionError):
        text = error.text({f: option_name(cfg, {"same_dataset": "same_dataset_batches"}.get(f, f))
                           for f in error.fields})
    return SystemExit(f"data error: {text or error}")


def check_options(cfg: PretrainConfig) -> None:
    """Everything that can be checked before a model loads: each part's options, the text sources, the model
    folder and its position table, the output folder."""
    try:
        for part_config in (cfg.model, cfg.data, cfg.mae, cfg.optim, cfg.output):
            part_config.check()
    except ConfigError as e:
        raise SystemExit(describe_error(cfg, e)) from None
    if cfg.optim.grad_cache_chunk:
        raise SystemExit(f"{option_name(cfg, 'grad_cache_chunk')} {cfg.optim.grad_cache_chunk}: GradCache chunks "
                         "contrastive batches; pretraining has no in-batch negatives (use "
                         "--gradient-accumulation-steps)")
    if cfg.output.eval_sts:
        raise SystemExit(f"{option_name(cfg, 'eval_sts')} {cfg.output.eval_sts}: pretrain.py does not evaluate; "
                         "score a checkpoint (its folder is a model) with evaluate.py")
    if cfg.optim.deepspeed:
        load_deepspeed_config(cfg.optim.deepspeed)
    d, m = cfg.data, cfg.model
    try:
        if any(is_prepared_texts(p) for p in d.train_data):
            if len(d.train_data) > 1:
                raise DataError("a prepared text corpus must be the only --train-data (prepare every source into "
                                "one: python -m scripts.prepare_texts --input A B ...)")
        else:
            for p in d.train_data:
                source_file(p)
            if len(set(map(os.path.realpath, d.train_data))) < len(d.train_data):
                raise DataError("a text source is given twice; give each once (its texts would be read twice)")
    except DataError as e:
        raise data_error(cfg, e) from None
    check_model_sources(m.backbone, m.from_config)
    try:
        (check_tokenizer_folder if m.from_config else check_model_folder)(m.backbone)
        source = m.from_config or m.backbone
        if os.path.exists(source):
            for note in check_max_lengths(source, passage_max_len=m.max_len):
                print(f"note: {note}", flush=True)
    except MaxLengthError as e:
        raise SystemExit(f"{option_name(cfg, 'max_len')} {e.value}: {e.reason}") from None
    except ValueError as e:
        raise SystemExit(f"{'--from-config' if m.from_config and 'tokenizer' not in str(e) else '--model'} {e}") \
            from None
    check_output_dir(cfg.output.output_dir, flat(cfg), cfg.output.overwrite_output_dir,
                     cfg.output.resume_from_checkpoint)


if __name__ == "__main__":
    import sys

    main(parse_config(PretrainConfig, strip_launcher_args(sys.argv[1:]), description=__doc__.split("\n")[0]))
