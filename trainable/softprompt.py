"""The soft prompt: PEFT prompt tuning's virtual-token embeddings, trained in fp32.

PEFT builds and initialises the embedding (`random`, `sample_vocab`, or TEXT) and writes the
standard adapter (`adapter_config.json` + `adapter_model.safetensors`, loadable with
`PeftModel.from_pretrained`). We do not use PEFT's forward: it puts the virtual tokens before
left padding and drops position ids, which is wrong under RoPE for batched generation, so
`trainable.embed` places them after the padding itself.
"""
from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel, PromptTuningConfig, TaskType, get_peft_model

from trainable.config import InitKind, TrainConfig
from trainable.errors import UsageError
from trainable.model import LoadedModel

_PEFT_INIT = {InitKind.RANDOM: "RANDOM", InitKind.SAMPLE_VOCAB: "SAMPLE_VOCAB", InitKind.TEXT: "TEXT"}
ADAPTER_NAME = "default"


class SoftPrompt:
    """Owns a PEFT prompt-tuning wrapper around the (shared, frozen) base model."""

    def __init__(self, peft_model: PeftModel):
        self.peft_model = peft_model

    @classmethod
    def create(cls, loaded: LoadedModel, config: TrainConfig, tokenizer_path: str | None = None) -> "SoftPrompt":
        kind = config.init_kind
        peft_config = PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=config.num_virtual_tokens,
            prompt_tuning_init=_PEFT_INIT[kind],
            prompt_tuning_init_text=config.init if kind is InitKind.TEXT else None,
            tokenizer_name_or_path=(tokenizer_path or loaded.model.name_or_path) if kind is InitKind.TEXT else None,
        )
        torch.manual_seed(config.seed)  # random and sample_vocab inits draw from torch's RNG
        peft_model = get_peft_model(loaded.model, peft_config)
        prompt = cls(peft_model)
        prompt.weight.data = prompt.weight.data.float()  # fp32 master copy even on a bf16 model
        return prompt

    @classmethod
    def load(cls, loaded: LoadedModel, adapter_dir: str | Path) -> "SoftPrompt":
        adapter_dir = Path(adapter_dir)
        if not (adapter_dir / "adapter_config.json").is_file():
            raise UsageError(f"prompt: got {str(adapter_dir)!r}, expected a PEFT adapter directory "
                             "with adapter_config.json")
        peft_model = PeftModel.from_pretrained(loaded.model, adapter_dir, is_trainable=False)
        if peft_model.peft_config[ADAPTER_NAME].peft_type.value != "PROMPT_TUNING":
            raise UsageError(f"prompt: got {str(adapter_dir)!r}, expected a PROMPT_TUNING adapter")
        prompt = cls(peft_model)
        prompt.weight.data = prompt.weight.data.float()
        return prompt

    @property
    def weight(self) -> torch.nn.Parameter:
        """[num_virtual_tokens, hidden] fp32, the only trainable tensor."""
        return self.peft_model.prompt_encoder[ADAPTER_NAME].embedding.weight

    @property
    def num_virtual_tokens(self) -> int:
        return self.weight.shape[0]

    def save(self, out_dir: str | Path) -> Path:
        out_dir = Path(out_dir)
        self.peft_model.save_pretrained(out_dir)
        return out_dir

    def state_dict(self) -> dict:
        return {"weight": self.weight.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.weight.copy_(state["weight"].to(self.weight.device))
