"""dtype auto: bf16 on CUDA with bf16; on a CPU the faster of two measured timings (the choice is
fed timings, never this machine's; the probe itself runs for real on the tiny model)."""

import pytest
import torch

from trainable.config import TrainConfig
from softprompt_cli.errors import UsageError
from trainable.dtype_probe import Timing, decide
from trainable.model.loading import cpu_flags, dtype_rule
from trainable.dtype_probe import choose_dtype


@pytest.mark.parametrize(
    "setting, device, cuda_bf16, want",
    [
        ("auto", "cpu", False, None),  # measured: trainable.dtype_probe
        ("auto", "cuda", True, "bfloat16"),
        ("auto", "cuda", False, "float32"),
        ("auto", "mps", False, "float32"),
        ("float32", "cpu", False, "float32"),
        ("bfloat16", "cpu", False, "bfloat16"),
        ("float32", "cuda", True, "float32"),
    ],
)
def test_the_rule_where_nothing_is_measured(setting, device, cuda_bf16, want):
    rule = dtype_rule(setting, device, cuda_bf16)
    if want is None:
        assert rule is None
        return
    name, reason = rule
    assert name == want and reason.startswith("auto: " if setting == "auto" else "set: ")
    if device == "cuda" and cuda_bf16 and setting == "auto":
        assert "no probe" in reason


FP32 = Timing(train_s=2.0, decode_s=1.0)


@pytest.mark.parametrize(
    "bf16, want",
    [
        (Timing(1.0, 1.0), "bfloat16"),  # 2.0 vs 3.0
        (Timing(2.0, 0.84), "bfloat16"),  # 2.84: just over 5% faster
        (Timing(2.0, 0.9), "float32"),  # 2.9: faster, but within the margin
        (Timing(3.0, 0.1), "float32"),  # decoding faster, training slower: the sum decides
        (Timing(0.5, 3.0), "float32"),
    ],
)
def test_the_choice_from_two_timings(bf16, want):
    name, reason = decide(FP32, bf16)
    assert name == want and reason.startswith("auto: measured fp32 3.00 s")
    assert f"bf16 {bf16.total:.2f} s" in reason


def test_a_failed_bf16_probe_chooses_fp32_and_says_why():
    name, reason = decide(FP32, None, "no bf16 kernel for addmm")
    assert name == "float32" and "bf16 failed (no bf16 kernel for addmm)" in reason


def test_reading_flags_from_a_cpuinfo_file(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx2 amx_tile amx_bf16\n\n"
        "processor\t: 1\nflags\t\t: fpu avx2 amx_tile amx_bf16\n"
    )
    assert cpu_flags(str(info)) == {"fpu", "avx2", "amx_tile", "amx_bf16"}
    assert cpu_flags(str(tmp_path / "missing")) == set()


def test_choose_dtype_returns_a_torch_dtype_and_why():
    dtype, reason = choose_dtype("auto", torch.device("cpu"))  # no model to measure: fp32
    assert dtype is torch.float32 and reason.startswith("auto: no model")
    assert choose_dtype("bfloat16", torch.device("cpu"))[0] is torch.bfloat16


@pytest.mark.parametrize("value", ["float16", "fp32", "", None, 32])
def test_a_bad_dtype_names_the_field(value):
    with pytest.raises(UsageError, match=r"^dtype: got .*expected one of auto, float32, bfloat16"):
        TrainConfig(dtype=value)
