"""Issue 22: each part owns its configuration. A loss defined and registered in this file alone trains through
train.py (dense and with GradCache) with the tiling it registered; a subclass of InfoNCE with another formula is
never tiled as plain InfoNCE; every shipped config parses to the settings it had before the parts were split."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import train
from cli_config import ConfigError, flat, opt, parse_config
from data.row_kind import RowKind
from losses import REGISTRY, InfoNCELoss, LossSpec, build_loss, choose_tiling, register, tiled_form, unregister
from losses.similarity import cos_sim, local_rows
from losses.tiled import TiledInfoNCELoss
from tests.helpers import REPO, losses, train_args


# ---------------------------------------------------------------- a loss of the test's own
@dataclass
class MarginOptions:
    toy_margin: float = opt(0.2, "toy: additive margin on the positive's similarity")


class MarginInfoNCE(InfoNCELoss):
    """InfoNCE with an additive margin on the positive (AM-softmax style): a subclass with another formula."""

    def __init__(self, temperature: float, margin: float):
        super().__init__(temperature)
        self.margin = margin

    def forward(self, q, p, *, rows=None, **_):
        group = p.shape[0] // q.shape[0]
        idx = local_rows(rows, q.shape[0]).to(q.device)
        logits = cos_sim(q[idx], p)  # [n, N*G] cosines
        logits = logits.index_put((torch.arange(len(idx)), idx * group), logits[torch.arange(len(idx)), idx * group]
                                  - self.margin) / self.temperature
        return F.cross_entropy(logits, idx * group)


def check_margin(options: MarginOptions, group_size) -> None:
    if not 0 <= options.toy_margin < 1:
        raise ConfigError("toy_margin", f"{options.toy_margin}: must be in [0, 1)")


@pytest.fixture()
def toy_loss():
    """Registered for one test, then removed (the registry is process-wide)."""
    register(LossSpec(name="toy_margin", rows=RowKind.GROUPS, options=MarginOptions, default_temperature=0.05,
                      make=lambda o, *, temperature, dim, build: MarginInfoNCE(temperature, o.toy_margin),
                      check=check_margin))
    yield "toy_margin"
    unregister("toy_margin")


def test_a_loss_registered_in_a_test_file_trains_through_train_py(toy_loss, tiny_run, tmp_path, capsys):
    model, data = tiny_run
    runs = {}
    for name, extra in (("dense", []), ("gradcache", ["--grad-cache-chunk", "5"])):
        cfg = parse_config(train.TrainConfig, train_args(model, data, str(tmp_path / name), "--loss", toy_loss,
                                                         "--max-steps", "2", "--toy-margin", "0.3", *extra))
        assert cfg.loss.options[toy_loss].toy_margin == 0.3  # its option became a flag
        runs[name] = train.main(cfg)
        assert runs[name]["steps"] == 2
    assert losses(str(tmp_path / "gradcache")) == pytest.approx(losses(str(tmp_path / "dense")), rel=1e-5)
    assert "loss toy_margin: τ = 0.05 (its default)" in capsys.readouterr().out
    # its own check, and the tiling it registered (none): refused by name, never InfoNCE's
    with pytest.raises(SystemExit, match="--toy-margin 1.5: must be in"):
        train.main(parse_config(train.TrainConfig, train_args(model, data, str(tmp_path / "x"), "--loss", toy_loss,
                                                              "--toy-margin", "1.5")))
    with pytest.raises(SystemExit, match="--loss-tile-size 2: loss 'toy_margin' has no tiled form"):
        train.main(parse_config(train.TrainConfig, train_args(model, data, str(tmp_path / "y"), "--loss", toy_loss,
                                                              "--loss-tile-size", "2")))


def test_a_subclass_of_infonce_with_another_formula_is_never_tiled_as_infonce(toy_loss):
    """Before the registry, tiled_form dispatched on isinstance(loss, InfoNCELoss): this loss became
    TiledInfoNCELoss once the batch passed --loss-tile-above, and silently trained without its margin."""
    loss = build_loss(toy_loss, dim=8)
    chosen = choose_tiling(toy_loss, loss, None, tile_above=16, batch_queries=65536)  # far above the threshold
    assert chosen is loss and not isinstance(chosen, TiledInfoNCELoss)
    gen = torch.Generator().manual_seed(0)
    q, p = torch.randn(6, 8, generator=gen), torch.randn(12, 8, generator=gen)
    plain = InfoNCELoss(0.05)(q, p)
    assert chosen(q, p).item() != pytest.approx(plain.item(), rel=1e-3)  # precondition: the formulas differ
    with pytest.raises(ValueError, match="loss 'toy_margin' has no tiled form"):
        tiled_form(toy_loss, loss, 4)
    assert isinstance(tiled_form("infonce", InfoNCELoss(0.05), 4), TiledInfoNCELoss)  # registered ones still tile


def test_a_name_registered_twice_is_refused_and_an_unknown_one_lists_the_registered(tiny_run, tmp_path):
    with pytest.raises(ValueError, match="loss 'gte' is registered twice"):
        register(LossSpec(name="gte", make=lambda o, **_: nn.Identity()))
    assert REGISTRY["gte"].options.__name__ == "GTEOptions"  # the original stays
    with pytest.raises(SystemExit, match="^--loss triplet: unknown loss 'triplet'; choose one of infonce, gte, "
                                         "distill, mnrl, softmax, cosine$"):
        train.main(train.TrainConfig.of(model=tiny_run[0], train_data=[tiny_run[1]], loss="triplet",
                                        output_dir=str(tmp_path / "o")))


# ---------------------------------------------------------------- configs keep their meaning
BEFORE = json.loads((REPO / "tests" / "config_values_before_issue22.json").read_text(encoding="utf-8"))
RENAMED_PATHS = {"data/sample/": "sample_data/"}  # moved by issue 22 (sample data out of the code package)
ADDED = {"allow_inexact_resume": False, "dtype": "auto",  # options added since the values were recorded, with defaults
         "append_eos": None, "query_instruction_format": None, "query_instruction": None, "format_passages": None,
         "lora_rank": 0, "lora_alpha": None, "lora_dropout": 0.1, "lora_target_modules": [],
         "lora_modules_to_save": [], "merge_lora": False}  # issue 27


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_every_shipped_config_parses_to_the_settings_it_had(name):
    """tests/config_values_before_issue22.json holds what the flat TrainConfig of 82e9a2b parsed each file to
    (configs/train/*.yaml by --config; each configs/experiments row, default and --full, as scripts/reproduce.py
    composes it)."""
    import scripts.reproduce as reproduce

    if name.startswith("configs/train/"):
        cfg = parse_config(train.TrainConfig, ["--config", str(REPO / name)])
    else:
        row_file, full = name.removesuffix(" --full"), name.endswith(" --full")
        _, rows = reproduce.load_grid(full)
        (row,) = [r for r in rows if r["file"] == row_file]
        cfg = train.TrainConfig.of(**row["train"])
    want = json.loads(json.dumps(BEFORE[name]))
    for key, value in want.items():
        if isinstance(value, list):
            want[key] = [_renamed(v) for v in value]
    have = json.loads(json.dumps(flat(cfg)))
    assert {k: v for k, v in have.items() if k not in ADDED} == want
    assert {k: have[k] for k in ADDED} == ADDED


def _renamed(value):
    for old, new in RENAMED_PATHS.items():
        if isinstance(value, str) and value.startswith(old):
            return new + value[len(old):]
    return value


# the decoder-embedder recipes of issue 27: the published settings they carry (every other option keeps its default)
RECIPES = {
    "configs/train/bge-multilingual-gemma2-lora.yaml": dict(  # FlagEmbedding's decoder_only/base.sh
        pooling="last", append_eos=True, query_instruction_format="<instruct>{}\n<query>{}", lora_rank=32,
        lora_alpha=64.0, lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj"],
        loss="distill", distill_base="infonce", distill_mode="m3", temperature=0.02, group_size=8,
        query_max_len=512, passage_max_len=512, same_dataset_batches=True, gradient_checkpointing=True,
        mixed_precision="bf16", dtype="bfloat16", lr=1e-4),
    "configs/train/e5-mistral-lora.yaml": dict(  # E5-mistral (arXiv:2401.00368)
        pooling="last", append_eos=True, query_instruction_format="Instruct: {}\nQuery: {}", lora_rank=16,
        loss="infonce", temperature=0.02, group_size=2, query_max_len=512, passage_max_len=512,
        gradient_checkpointing=True, mixed_precision="bf16", deepspeed="configs/deepspeed/zero3.json", lr=1e-4),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_decoder_recipes_hold_the_published_settings(name):
    have = flat(parse_config(train.TrainConfig, ["--config", str(REPO / name)]))
    assert {k: have[k] for k in RECIPES[name]} == RECIPES[name]
