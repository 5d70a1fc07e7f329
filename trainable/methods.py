"""The three ways to tune a frozen model with virtual tokens, as PEFT names and builds them.

- `prompt_tuning`  PEFT `PromptTuningConfig`: the virtual tokens' input embeddings are the weights.
- `p_tuning`       PEFT `PromptEncoderConfig`: input embeddings re-parameterised by an MLP
                   (hidden width `encoder_hidden_size`); still input embeddings, so the same
                   `inputs_embeds` path as prompt tuning.
- `prefix_tuning`  PEFT `PrefixTuningConfig` (P-tuning v2's deep prompts): learned key/values at
                   every layer, optionally through an MLP projection (`prefix_projection` > 0);
                   they enter the model as the initial KV cache.

Plain constants (no torch), so that spaces can validate against them before anything starts.
"""

from __future__ import annotations

from enum import Enum


class Method(str, Enum):
    PROMPT_TUNING = "prompt_tuning"
    P_TUNING = "p_tuning"
    PREFIX_TUNING = "prefix_tuning"


METHODS = tuple(m.value for m in Method)
DEFAULT_METHOD = Method.PROMPT_TUNING.value

# `peft_type` in a saved adapter_config.json -> our method.
PEFT_TYPES = {
    "PROMPT_TUNING": Method.PROMPT_TUNING.value,
    "P_TUNING": Method.P_TUNING.value,
    "PREFIX_TUNING": Method.PREFIX_TUNING.value,
}

# TrainConfig fields that exist for one method only: a search samples them only for trials of
# that method (Optuna never sees a value the trial would ignore), and a space that sets one
# without being able to pick its method is refused.
METHOD_ONLY = {
    "encoder_hidden_size": Method.P_TUNING.value,  # width of P-tuning's MLP (PEFT default: the model's hidden size)
    "prefix_projection": Method.PREFIX_TUNING.value,  # 0: key/values are the weights; N: through an MLP of width N
}


def applies(field: str, method: str) -> bool:
    """Whether a trial of `method` uses the TrainConfig field `field`."""
    return METHOD_ONLY.get(field, method) == method


def method_list() -> str:
    return ", ".join(METHODS)
