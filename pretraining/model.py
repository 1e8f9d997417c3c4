"""The model of masked auto-encoding pretraining: an encoder with its MLM head, and RetroMAE's enhanced decoder.

    encoder   a transformers model for masked LM, split into its base (`backbone`: what is saved, and what train.py
              fine-tunes) and its MLM head (`head`: tied to the word embeddings, as the checkpoint has it)
    decoder   one transformer layer, randomly initialised, with the shapes of one encoder layer (so exactly one
              layer of parameters), whose queries and keys/values are two streams (RetroMAE section 3.2):
                query stream      h_i = e_[CLS] + p_i           the sentence vector plus position i's embedding
                key/value stream  [e_[CLS], x_1 + p_1, ...]     the sentence vector at position 0, then the token
                                                                embeddings of the unmasked text (the encoder's own
                                                                embedding module: word + position (+ type), norm)
              and a mask per row (pretraining/masking.py: row i never sees token i, always sees position 0). It
              predicts through the encoder's MLM head, so the decoder shares the embeddings and the head.
The sentence vector e_[CLS] is the encoder's last hidden state at position 0, computed on the encoder's masked
input; it is the only path from the encoder to the decoder (tests/test_retromae.py checks the gradient).

`forward(batch)` returns logits only at positions with a label: the encoder's masked positions and the decoder's
labelled rows ([N, V] each, with their targets), and with DupMAE's bag-of-words term the max over positions of the
encoder's logits. pretraining/objective.py turns them into the loss. Saving writes the encoder alone
(models/st_folder.py: the backbone's weights, tokenizer, `embedding_config.json` with pooling cls).

Families: the MLM head must be one module beside the base model (BERT `cls`, RoBERTa-likes `lm_head`), and the
encoder must have a table of absolute position embeddings for the query stream (RoBERTa-likes number positions from
padding_idx + 1, as their embeddings do). Others are refused when the model is built.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.checks import PADDING_OFFSET_TYPES, check_vocabulary
from models.settings import EncoderSettings
from models.st_folder import save_folder
from pretraining.masking import IGNORE


class EnhancedDecoderLayer(nn.Module):
    """One post-norm transformer layer (BERT's shapes) attending from a query stream to a separate key/value stream
    under a per-row boolean mask."""

    def __init__(self, config):
        super().__init__()
        hidden, inner, eps = config.hidden_size, config.intermediate_size, config.layer_norm_eps
        from transformers.activations import ACT2FN

        self.heads = config.num_attention_heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.attention_output, self.attention_norm = nn.Linear(hidden, hidden), nn.LayerNorm(hidden, eps=eps)
        self.intermediate, self.output = nn.Linear(hidden, inner), nn.Linear(inner, hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=eps)
        self.act = ACT2FN[config.hidden_act]
        self.dropout, self.attention_dropout = config.hidden_dropout_prob, config.attention_probs_dropout_prob
        for module in self.modules():  # BERT's initialisation (the encoder's initializer_range)
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=config.initializer_range)
                nn.init.zeros_(module.bias)

    def forward(self, query: torch.Tensor, key_value: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """query, key_value: [B, L, H]; visible: [B, L, L] bool (row i may attend to key j) -> [B, L, H]."""
        b, length, hidden = query.shape
        d = hidden // self.heads

        def split(x):  # [B, L, H] -> [B, heads, L, d]
            return x.view(b, x.shape[1], self.heads, d).transpose(1, 2)

        attended = F.scaled_dot_product_attention(
            split(self.query(query)), split(self.key(key_value)), split(self.value(key_value)),
            attn_mask=visible[:, None], dropout_p=self.attention_dropout if self.training else 0.0)  # [B, h, L, d]
        attended = attended.transpose(1, 2).reshape(b, length, hidden)
        x = self.attention_norm(query + F.dropout(self.attention_output(attended), self.dropout, self.training))
        return self.output_norm(x + F.dropout(self.output(self.act(self.intermediate(x))), self.dropout,
                                              self.training))


class MAEModel(nn.Module):
    """Encoder + MLM head (+ enhanced decoder when `decoder`); `bow`: also DupMAE's bag-of-words logits."""

    def __init__(self, mlm_model: nn.Module, tokenizer, settings: EncoderSettings, *, decoder: bool, bow: bool = False):
        super().__init__()
        self.backbone = mlm_model.base_model
        heads = [m for _, m in mlm_model.named_children() if m is not self.backbone]
        config = self.backbone.config
        if len(heads) != 1:
            raise ValueError(f"{config.model_type}: its MLM head is {len(heads)} modules "
                             f"({', '.join(n for n, m in mlm_model.named_children() if m is not self.backbone)}), "
                             "not one; masked auto-encoding here takes BERT- and RoBERTa-style models")
        embeddings = getattr(self.backbone, "embeddings", None)
        if not isinstance(getattr(embeddings, "position_embeddings", None), nn.Embedding):
            raise ValueError(f"{config.model_type}: has no table of absolute position embeddings, which the enhanced "
                             "decoder's query stream is built from")
        self.head = heads[0]
        self.decoder = EnhancedDecoderLayer(config) if decoder else None
        self.tokenizer, self.settings, self.bow = tokenizer, settings, bow
        self.position_offset = (config.pad_token_id or 0) + 1 if config.model_type in PADDING_OFFSET_TYPES else 0

    @property
    def dim(self) -> int:
        return self.backbone.config.hidden_size

    # ---------------------------------------------------------------- the three parts
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, L] -> the encoder's last hidden states [B, L, H]."""
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def key_value_stream(self, cls: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, H], [B, L] -> [B, L, H]: the sentence vector at position 0, the unmasked tokens' embeddings after it."""
        tokens = self.backbone.embeddings(input_ids=input_ids)  # [B, L, H]
        return torch.cat([cls[:, None], tokens[:, 1:]], dim=1)

    def decode(self, cls: torch.Tensor, input_ids: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """cls [B, H], the unmasked input_ids [B, L], visible [B, L, L] -> decoder states [B, L, H]."""
        length = input_ids.shape[1]
        positions = torch.arange(length, device=input_ids.device) + self.position_offset
        query = cls[:, None] + self.backbone.embeddings.position_embeddings(positions)[None]  # [B, L, H]
        return self.decoder(query, self.key_value_stream(cls, input_ids), visible)

    def forward(self, batch: dict) -> dict:
        """A collated batch (pretraining/batches.py) -> logits at labelled positions with their targets:
        encoder_logits [M, V], encoder_targets [M]; decoder_logits [N, V], decoder_targets [N] (with a decoder);
        bow_logits [B, V], bow_targets [B, V] (with bow)."""
        hidden = self.encode(batch["encoder_input_ids"], batch["attention_mask"])  # [B, L, H]
        labels = batch["encoder_labels"]
        at = labels != IGNORE
        out = {"encoder_logits": self.head(hidden[at]), "encoder_targets": labels[at]}
        if self.decoder is not None:
            decoded = self.decode(hidden[:, 0], batch["decoder_input_ids"], batch["decoder_visible"])  # [B, L, H]
            labels = batch["decoder_labels"]
            at = labels != IGNORE
            out.update(decoder_logits=self.head(decoded[at]), decoder_targets=labels[at])
        if self.bow:
            out.update(self.bag_of_words(hidden, batch["decoder_input_ids"], batch["attention_mask"]))
        return out

    def bag_of_words(self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
        """DupMAE: bow_logits [B, V] = max over the text's positions after [CLS] of the encoder's MLM logits;
        bow_targets [B, V] = the text's tokens (between the first and last special token) as a distribution."""
        keep = attention_mask.bool().clone()
        keep[:, 0] = False
        logits = self.head(hidden).masked_fill(~keep[..., None], -math.inf)  # [B, L, V]
        body = keep.clone()
        body[torch.arange(len(body)), attention_mask.sum(1) - 1] = False  # the last token ([SEP])
        targets = torch.zeros(logits.shape[0], logits.shape[2], device=logits.device)
        targets.scatter_add_(1, input_ids, body.float())
        return {"bow_logits": logits.amax(dim=1), "bow_targets": targets / targets.sum(1, keepdim=True)}

    # ---------------------------------------------------------------- the encoder alone
    def encoder(self):
        """A BiEncoder over the same backbone (shared weights), with this model's settings (pooling cls)."""
        from models.bi_encoder import BiEncoder

        return BiEncoder(self.backbone, self.tokenizer, self.settings)

    def save(self, folder: str, state_dict: dict | None = None, merge: bool = False) -> None:
        """The encoder as a model folder train.py and evaluate.py load (state_dict: backbone keys, prefix removed);
        merge: training/checkpoint.py's LoRA flag, unused here (no adapters)."""
        save_folder(self, folder, state_dict)

    def gradient_checkpointing_enable(self):
        self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def load_mlm_model(model: str, from_config: str | None, attn_implementation: str | None, dtype, log):
    """(transformers MLM model, tokenizer): pretrained weights from `model`, or random ones from `from_config` with
    `model`'s tokenizer. A checkpoint without MLM-head weights (a sentence-embedding model, a bare encoder) gets a
    fresh head, said in the log."""
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    kwargs = {k: v for k, v in (("attn_implementation", attn_implementation), ("dtype", dtype)) if v is not None}
    tokenizer = AutoTokenizer.from_pretrained(model)
    if from_config:
        mlm = AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(from_config), **kwargs)
        log(f"random weights from {from_config}, tokenizer of {model}")
    else:
        mlm, info = AutoModelForMaskedLM.from_pretrained(model, output_loading_info=True, **kwargs)
        prefix = mlm.base_model_prefix + "."
        fresh = sorted(k for k in info["missing_keys"] if not k.startswith(prefix))
        if fresh:
            log(f"note: {model} has no trained MLM head ({', '.join(fresh[:3])}{', ...' if len(fresh) > 3 else ''} "
                "not in its weights): a fresh head, randomly initialised, its output tied to the word embeddings")
    check_vocabulary(tokenizer, mlm, model)
    return mlm, tokenizer


def build_mae_model(model: str, from_config: str | None, *, objective: str, max_len: int, bow: bool,
                    attn_implementation: str | None = None, dtype=None, gradient_checkpointing: bool = False,
                    log=print) -> MAEModel:
    """The model pretrain.py trains; its settings (saved with the encoder) record pooling cls and max_len."""
    mlm, tokenizer = load_mlm_model(model, from_config, attn_implementation, dtype, log)
    settings = EncoderSettings(pooling="cls", normalize=True, query_max_len=min(64, max_len), passage_max_len=max_len,
                               append_eos=False)  # encoders only (MAEModel refuses others)
    out = MAEModel(mlm, tokenizer, settings, decoder=objective == "retromae", bow=bow)
    if gradient_checkpointing:
        out.gradient_checkpointing_enable()
    return out
