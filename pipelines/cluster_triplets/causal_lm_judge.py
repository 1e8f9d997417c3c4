"""A Hugging Face causal LM as judge: the answer whose letter it finds more probable after the prompt.

For each prompt we score the two continuations "A" and "B" (with a leading space after a plain prompt, bare after
a chat template's assistant turn) by their summed token log-probability under the model, and reply with the more
probable letter ("tie" when equal, which `run_judge` counts and skips). Scoring the letters instead of sampling a
reply means every answer is one of the two and the judge is deterministic. Prompts are batched (right padding,
attention mask), in bf16 on a GPU and fp32 on the CPU.

A model that is not a causal LM (an encoder such as BERT/MiniLM, a seq2seq model) is refused before any weights
are loaded: its config must name a model type with a causal-LM head in transformers, and the architectures it was
saved with (when listed) must include such a head.
"""
from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from pipelines.cluster_triplets.judges import JudgeError
from pipelines.cluster_triplets.sampling import Triplet


def check_causal_lm(name_or_path: str) -> None:
    """Raise JudgeError unless the config at `name_or_path` describes a causal language model."""
    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise JudgeError(f"--judge-model {name_or_path}: cannot read its config ({err})") from None
    heads = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    saved = list(getattr(config, "architectures", None) or [])
    if (config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or getattr(config, "is_encoder_decoder", False)
            or (saved and not heads.intersection(saved))):
        raise JudgeError(
            f"--judge-model {name_or_path} is not a causal language model (model type {config.model_type!r}, "
            f"saved as {', '.join(saved) or 'no architecture'}); the judge scores the answers A/B with a decoder "
            "LM such as Llama, Qwen, Mistral or GPT-2 (an instruction-tuned one for real judgements)")


class CausalLMJudge:
    def __init__(self, name_or_path: str, *, batch_size: int = 8, device: str | None = None,
                 chat_template: bool | None = None, max_length: int | None = None):
        check_causal_lm(name_or_path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.bfloat16 if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        self.model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype).to(self.device).eval()
        self.chat = bool(getattr(self.tokenizer, "chat_template", None)) if chat_template is None else chat_template
        if self.chat and not getattr(self.tokenizer, "chat_template", None):
            raise JudgeError(f"--judge-model {name_or_path}: its tokenizer has no chat template")
        letters = ("A", "B") if self.chat else (" A", " B")
        self.answer_ids = [self.tokenizer(x, add_special_tokens=False)["input_ids"] for x in letters]  # per letter
        if not all(self.answer_ids) or self.answer_ids[0] == self.answer_ids[1]:
            raise JudgeError(f"--judge-model {name_or_path}: its tokenizer does not tell {letters[0]!r} from "
                             f"{letters[1]!r} ({self.answer_ids})")
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        self.max_length = max_length or getattr(self.model.config, "max_position_embeddings", None)
        self.batch_size = batch_size
        self.name = f"causal-lm:{name_or_path}:{'chat' if self.chat else 'plain'}"

    def prompt_ids(self, prompt: str) -> list[int]:
        if self.chat:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.tokenizer(prompt)["input_ids"]

    @torch.no_grad()
    def letter_logprobs(self, prompts: list[str]) -> torch.Tensor:
        """[len(prompts), 2]: summed log-probability of the continuations A and B after each prompt."""
        rows, spans = [], []  # 2 rows per prompt: prompt + A, prompt + B
        for prompt in prompts:
            ids = self.prompt_ids(prompt)
            for answer in self.answer_ids:
                if self.max_length and len(ids) + len(answer) > self.max_length:
                    raise JudgeError(f"{self.name}: a prompt of {len(ids)} tokens exceeds the model's "
                                     f"{self.max_length} positions; shorten the template or the texts")
                rows.append(ids + answer)
                spans.append((len(ids), len(answer)))
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)  # [2P, L]
        mask = torch.zeros((len(rows), length), dtype=torch.long)  # [2P, L]
        for i, r in enumerate(rows):
            input_ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
        logits = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)).logits
        scores = torch.empty(len(rows), dtype=torch.float64)
        for i, (start, n) in enumerate(spans):
            # the answer's n tokens are predicted from positions start-1 .. start+n-2; only those rows of the
            # [2P, L, V] logits are normalised (a full log-softmax would hold L × V floats per row)
            logp = torch.log_softmax(logits[i, start - 1:start - 1 + n].float(), dim=-1).cpu()  # [n, V]
            scores[i] = logp.gather(1, input_ids[i, start:start + n, None]).sum()
        return scores.view(len(prompts), 2)

    def answer(self, prompts: list[str], triplets: list[Triplet]) -> list[str]:
        scores = self.letter_logprobs(prompts)
        return ["A" if a > b else "B" if b > a else "tie" for a, b in scores.tolist()]
