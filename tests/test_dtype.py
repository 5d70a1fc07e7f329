"""dtype auto: bf16 on CUDA with bf16 and on CPUs with AMX, else fp32 - fed flag sets, never this
machine's (a default must not depend on the machine it was measured on)."""

import pytest
import torch

from trainable.config import TrainConfig
from softprompt_cli.errors import UsageError
from trainable.model import choose_dtype, cpu_flags, dtype_rule

SAPPHIRE_RAPIDS = {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}
COOPER_LAKE = {"avx512f", "avx512_bf16"}  # bf16 instructions, no AMX: fp32 measured faster
SKYLAKE = {"avx2", "avx512f"}


@pytest.mark.parametrize(
    "setting, device, cuda_bf16, flags, want",
    [
        ("auto", "cpu", False, SAPPHIRE_RAPIDS, "bfloat16"),
        ("auto", "cpu", False, {"amx_tile"}, "bfloat16"),
        ("auto", "cpu", False, {"amx_bf16"}, "bfloat16"),
        ("auto", "cpu", False, COOPER_LAKE, "float32"),
        ("auto", "cpu", False, SKYLAKE, "float32"),
        ("auto", "cpu", False, set(), "float32"),
        ("auto", "cuda", True, SKYLAKE, "bfloat16"),
        ("auto", "cuda", False, SAPPHIRE_RAPIDS, "float32"),
        ("auto", "mps", False, SAPPHIRE_RAPIDS, "float32"),
        ("float32", "cpu", False, SAPPHIRE_RAPIDS, "float32"),
        ("bfloat16", "cpu", False, SKYLAKE, "bfloat16"),
        ("float32", "cuda", True, set(), "float32"),
    ],
)
def test_the_auto_rule(setting, device, cuda_bf16, flags, want):
    name, reason = dtype_rule(setting, device, cuda_bf16, flags)
    assert name == want and reason
    if setting == "auto":
        assert reason.startswith("auto: ")
        assert ("AMX" in reason) == (device not in ("cuda",))


def test_reading_flags_from_a_cpuinfo_file(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx2 amx_tile amx_bf16\n\n"
        "processor\t: 1\nflags\t\t: fpu avx2 amx_tile amx_bf16\n"
    )
    assert cpu_flags(str(info)) == {"fpu", "avx2", "amx_tile", "amx_bf16"}
    assert cpu_flags(str(tmp_path / "missing")) == set()


def test_choose_dtype_returns_a_torch_dtype_and_why():
    dtype, reason = choose_dtype("auto", torch.device("cpu"))
    assert dtype in (torch.float32, torch.bfloat16) and reason.startswith("auto: ")
    assert choose_dtype("bfloat16", torch.device("cpu"))[0] is torch.bfloat16


@pytest.mark.parametrize("value", ["float16", "fp32", "", None, 32])
def test_a_bad_dtype_names_the_field(value):
    with pytest.raises(UsageError, match=r"^dtype: got .*expected one of auto, float32, bfloat16"):
        TrainConfig(dtype=value)
