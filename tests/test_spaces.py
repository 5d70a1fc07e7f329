"""Every shipped space loads; malformed spaces fail with one-line errors naming the key path.

.venv/bin/pytest tests/test_spaces.py -q
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import spaces
from spaces import SHIPPED_SPACES, DistKind, Distribution, load_space
from spaces.loader import SPACES_DIR
from trainable.config import TrainConfig
from softprompt_cli.errors import UsageError

SHIPPED_FILES = sorted(SPACES_DIR.glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED_FILES, ids=lambda p: p.stem)
def test_every_shipped_space_loads(path):
    by_name = load_space(path.stem)
    assert by_name.to_dict() == load_space(str(path)).to_dict()
    assert by_name.name == path.stem and by_name.source == str(path)
    json.dumps(by_name.to_dict())  # loggable as is
    for method in by_name.methods:  # every candidate of every method makes a TrainConfig
        params = _first(by_name, method)
        for name, _, dist in by_name.sampled(method):
            for _, value in dist.candidates():
                config = by_name.train_config({**params, name: value})
                assert isinstance(config, TrainConfig) and config.method == method


def test_shipped_names_are_the_yaml_files():
    assert set(SHIPPED_SPACES) == {p.stem for p in SHIPPED_FILES} >= {"cpu", "default", "smoke"}


def test_default_is_the_real_search():
    spec = load_space("default")
    assert spec.model == "Qwen/Qwen2.5-Coder-0.5B"
    assert spec.methods == ("prompt_tuning", "p_tuning", "prefix_tuning")
    tokens = spec.search["num_virtual_tokens"]
    assert tokens.kind is DistKind.CHOICE and min(tokens.values) <= 4 and max(tokens.values) >= 100
    init = spec.search["init"].by_method["prompt_tuning"].values
    texts = [v for v in init if v not in ("random", "sample_vocab")]
    assert "random" in init and "sample_vocab" in init and len(texts) >= 3
    assert all(len(text.split()) >= 5 for text in texts)
    lr = spec.search["learning_rate"].by_method["prompt_tuning"]
    assert lr.kind is DistKind.LOGUNIFORM and (lr.low, lr.high) == (1e-3, 3e-1)
    names = {method: [name for name, _, _ in spec.sampled(method)] for method in spec.methods}
    assert "encoder_hidden_size" in names["p_tuning"] and "encoder_hidden_size" not in names["prefix_tuning"]
    assert "init.prompt_tuning" in names["prompt_tuning"] and "init.prefix_tuning" in names["prefix_tuning"]
    assert not any(name.startswith("init") for name in names["p_tuning"])
    assert spec.search["init"].by_method["prefix_tuning"].values[2:] == tuple(texts)
    for method in spec.methods:
        assert "epochs" not in spec.fixed and spec.train_config(_first(spec, method)).epochs == 10


def test_default_trains_on_mbpp_and_keeps_humaneval_for_val_and_test():
    data = load_space("default").data
    assert (data.train.source, data.train.n) == ("mbpp", 397)
    assert (data.val.source, data.val.n, data.test[0].source, data.test[0].n) == ("humaneval", 64, "humaneval", 100)
    assert load_space("default").fixed["dtype"] == "auto"


def test_smoke_keeps_its_distillation_tiny():
    """Small, but not so small that the bundled model may solve none of its training problems
    (in bf16 it solves none of the first 4): 12 problems, two candidates each, about 2 min once."""
    data = load_space("smoke").data
    assert data.train.source == "mbpp" and 8 <= data.train.n <= 16 and data.distill.samples <= 2


def test_cpu_is_a_real_search_for_two_cores():
    spec = load_space("cpu")
    assert spec.model == "bundled" and spec.resources.gpu == 0 and spec.resources.cpu <= 2
    assert spec.data.train.source == "mbpp" and spec.data.needs_targets()
    assert (spec.data.val.source, spec.data.test[0].source) == ("humaneval", "humaneval")
    assert spec.data.test_n >= 100 and spec.data.val.n >= 20
    budget = spec.budget
    assert budget.grace_period < budget.max_epochs and budget.num_samples > budget.reduction_factor, (
        "ASHA must be able to stop trials early"
    )
    texts = [v for v in spec.search["init"].values if v not in ("random", "sample_vocab")]
    assert texts, "the report needs a text init to compare a hand-written prompt"


def _first(spec, method: str) -> dict:
    """One trial's params of `method` (Optuna's names): the first candidate of each."""
    params = {name: dist.candidates()[0][1] for name, _, dist in spec.sampled(method)}
    return {**params, "method": method} if "method" in spec.search else params


def _leaves(tree: dict, prefix=()) -> dict:
    """Key paths to values; a searched distribution is one leaf (it replaces as a whole)."""
    out = {}
    for key, value in tree.items():
        here = prefix + (key,)
        is_distribution = len(here) == 2 and here[0] == "search"
        if isinstance(value, dict) and not is_distribution:
            out.update(_leaves(value, here))
        else:
            out[here] = value
    return out


def test_smoke_differs_from_default_only_where_it_overrides():
    default, smoke = load_space("default").to_dict(), load_space("smoke").to_dict()
    overrides = yaml.safe_load((SPACES_DIR / "smoke.yaml").read_text())
    assert overrides.pop("base") == "default"
    changed = set(_leaves(overrides))
    deleted = {path for path, value in _leaves(overrides).items() if value is None}
    d, s = _leaves(default), _leaves(smoke)
    assert set(d) - {("name",), ("source",)} - deleted == set(s) - {("name",), ("source",)}
    for path in set(d) - {("name",), ("source",)}:
        if path in changed:
            continue
        assert s[path] == d[path], path
    assert set(load_space("smoke").search) == set(load_space("default").search) - {"encoder_hidden_size"}
    spec = load_space("smoke")
    assert spec.model == "bundled" and spec.resources.gpu == 0 and spec.budget.num_samples <= 4
    assert spec.methods == ("prompt_tuning", "prefix_tuning")  # both ways a soft prompt enters the model
    init = spec.search["init"].by_method["prompt_tuning"].values
    assert sum(v not in ("random", "sample_vocab") for v in init) == 1


# Each case: YAML text (`base: default` deltas unless a full file) and the key path the error names.
MALFORMED = {
    "unknown top-level key": ("base: default\nmodle: x\n", "modle"),
    "unknown nested key": ("base: default\nbudget: {max_epoch: 3}\n", "budget.max_epoch"),
    "unknown distribution kind": (
        "base: default\nsearch: {learning_rate: {logunif: [0.1, 0.2]}}\n",
        "search.learning_rate.logunif",
    ),
    "wrong type": ("base: default\nbudget: {num_samples: many}\n", "budget.num_samples"),
    "wrong type of a fixed value": ("base: default\nfixed: {batch_size: '8'}\n", "fixed.batch_size"),
    "section not a mapping": ("base: default\ndata: 5\n", "data"),
    "scalar where a distribution goes": ("base: default\nsearch: {learning_rate: 0.01}\n", "search.learning_rate"),
    "empty choice": ("base: default\nsearch: {init: {choice: []}}\n", "search.init.choice"),
    "inverted loguniform": (
        "base: default\nsearch: {learning_rate: {loguniform: [0.3, 0.001]}}\n",
        "search.learning_rate.loguniform",
    ),
    "loguniform low <= 0": (
        "base: default\nsearch: {learning_rate: {loguniform: [0, 0.1]}}\n",
        "search.learning_rate.loguniform[0]",
    ),
    "inverted randint": (
        "base: default\nsearch: {num_virtual_tokens: {randint: [5, 1]}}\n",
        "search.num_virtual_tokens.randint",
    ),
    "range of one end": ("base: default\nsearch: {warmup_ratio: {uniform: [0.1]}}\n", "search.warmup_ratio.uniform"),
    "float range over an integer field": (
        "base: default\nsearch: {num_virtual_tokens: {loguniform: [4, 100]}}\n",
        "search.num_virtual_tokens.loguniform",
    ),
    "range end invalid for TrainConfig": (
        "base: default\nfixed: {warmup_ratio: null}\nsearch: {warmup_ratio: {uniform: [0.0, 1.0]}}\n",
        "search.warmup_ratio.uniform[1]",
    ),
    "choice value invalid for TrainConfig": (
        "base: default\nsearch: {num_virtual_tokens: {choice: [4, 0]}}\n",
        "search.num_virtual_tokens.choice[1]",
    ),
    "repeated choice": (
        "base: default\nsearch: {num_virtual_tokens: {choice: [4, 4]}}\n",
        "search.num_virtual_tokens.choice[1]",
    ),
    "searched and fixed both": ("base: default\nfixed: {learning_rate: 0.01}\n", "fixed.learning_rate"),
    "epochs in fixed": ("base: default\nfixed: {epochs: 3}\n", "fixed.epochs"),
    "epochs in search": ("base: default\nsearch: {epochs: {choice: [1, 2]}}\n", "search.epochs"),
    "unknown TrainConfig field": ("base: default\nfixed: {lr: 0.1}\n", "fixed.lr"),
    "grace_period > max_epochs": ("base: default\nbudget: {grace_period: 11}\n", "budget.grace_period"),
    "max_concurrent 0": ("base: default\nbudget: {max_concurrent: 0}\n", "budget.max_concurrent"),
    "reduction_factor 1": ("base: default\nbudget: {reduction_factor: 1}\n", "budget.reduction_factor"),
    "negative gpu": ("base: default\nresources: {gpu: -1}\n", "resources.gpu"),
    "gpu 1.5": ("base: default\nresources: {gpu: 1.5}\n", "resources.gpu"),
    "a GPU share per trial": ("base: default\nresources: {gpu: 0.25}\n", "resources.gpu"),
    "two GPUs per engine": ("base: default\nresources: {gpu: 2}\n", "resources.gpu"),
    "cpu 0": ("base: default\nresources: {cpu: 0}\n", "resources.cpu"),
    "data sizes exceeding 164": ("base: default\ndata: {train: 100}\n", "data.test.n"),
    "unknown data source": ("base: default\ndata: {val: {source: apps}}\n", "data.val.source"),
    "more than the source has": ("base: default\ndata: {train: {n: 398}}\n", "data.train.n"),
    "two splits taking too much of one source": ("base: default\ndata: {val: {n: 100}}\n", "data.test.n"),
    "overlapping explicit splits": (
        "base: default\ndata: {val: {ids: [HumanEval/1, HumanEval/2]}, test: {ids: [HumanEval/2]}}\n",
        "data.test.ids",
    ),
    "unknown split key": ("base: default\ndata: {train: {source: mbpp, size: 3}}\n", "data.train.size"),
    "unknown data key": ("base: default\ndata: {dev: 3}\n", "data.dev"),
    "bad distill setting": ("base: default\ndata: {distill: {samples: many}}\n", "data.distill.samples"),
    "bad dtype": ("base: default\nfixed: {dtype: float16}\n", "fixed.dtype"),
    "no training problems": ("base: default\ndata: {train: 0}\n", "data.train"),
    "empty model": ("base: default\nmodel: ''\n", "model"),
    "missing required key": ("model: bundled\nsearch: {seed: {choice: [0]}}\n", "data"),
    "missing budget key": ("base: default\nbudget: {seed: null}\n", "budget.seed"),
    "unknown base name": ("base: nonesuch\n", "base"),
    "a YAML list at the top": ("- model: bundled\n", "{file}"),
    "an empty file": ("", "{file}"),
    "a YAML syntax error": ("base: default\nsearch: {init: [random\n", "{file}"),
    "a duplicate key": ("base: default\nmodel: a\nmodel: b\n", "{file}"),
    # Zero test problems: the whole search ran, then the final report crashed.
    "no test problems": ("base: default\ndata: {test: 0}\n", "data.test"),
    "no val problems": ("base: default\ndata: {val: 0}\n", "data.val"),
    # A keyword spelled otherwise silently became a TEXT init from the embedding of that word.
    "init keyword in capitals": ("base: default\nsearch: {init: {choice: [Random, x]}}\n", "search.init.choice[0]"),
    "init keyword upper case": (
        "base: default\nsearch: {init: {choice: [x, SAMPLE_VOCAB]}}\n",
        "search.init.choice[1]",
    ),
    "init keyword with a space": ("base: default\nsearch: {init: {choice: ['random ', x]}}\n", "search.init.choice[0]"),
    "init keyword with a hyphen": (
        "base: default\nsearch: {init: {choice: [x, Sample-Vocab]}}\n",
        "search.init.choice[1]",
    ),
    "a fixed init keyword in capitals": ("base: smoke\nsearch: {init: null}\nfixed: {init: RANDOM}\n", "fixed.init"),
    # YAML 1.1 reads off/on/yes/no as booleans; the message must show what the user wrote.
    "yaml off where a number goes": ("base: default\nfixed: {weight_decay: off}\n", "fixed.weight_decay"),
    "yaml alias that contains itself": ("base: default\nx: &x [*x]\n", "{file}"),
    "yaml nested past the recursion limit": ("base: default\nx: " + "[" * 5000 + "]" * 5000 + "\n", "{file}"),
    # A lone surrogate (YAML's "\ud800" escape) passed, then every trial died encoding it.
    "init text with a lone surrogate": (
        'base: default\nsearch: {init: {choice: [random, "Write \\ud800 code."]}}\n',
        "search.init.choice[1]",
    ),
    "model with a lone surrogate": ('base: default\nmodel: "org/m\\udfff"\n', "model"),
    "a key with a lone surrogate": ('base: default\nfixed: {"x\\ud800": 1}\n', "fixed"),
    # Sizes past any sane plan (typos) passed the dry run; the caps name the allowed range.
    "100000 virtual tokens": (
        "base: default\nsearch: {num_virtual_tokens: {choice: [8, 100000]}}\n",
        "search.num_virtual_tokens.choice[1]",
    ),
    "a randint up to 100000 virtual tokens": (
        "base: default\nsearch: {num_virtual_tokens: {randint: [8, 100000]}}\n",
        "search.num_virtual_tokens.randint[1]",
    ),
    "a billion trials": ("base: default\nbudget: {num_samples: 1000000000}\n", "budget.num_samples"),
    "a million epochs": ("base: default\nbudget: {max_epochs: 1000000}\n", "budget.max_epochs"),
}


@pytest.mark.parametrize("text,path", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_space_is_a_one_line_usage_error(tmp_path, text, path):
    space = tmp_path / "bad.yaml"
    space.write_text(text)
    with pytest.raises(UsageError) as caught:
        load_space(str(space))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(path.format(file=space) + ":"), message
    assert "expected" in message


def test_yaml_syntax_error_names_the_line(tmp_path):
    space = tmp_path / "bad.yaml"
    space.write_text("base: default\nbudget:\n  num_samples: 3\n  seed: [0\n")
    with pytest.raises(UsageError, match=r"line \d+"):
        load_space(str(space))


@pytest.mark.parametrize("make", [lambda t: t, lambda t: t / "missing.yaml"], ids=["directory", "missing"])
def test_unreadable_file(tmp_path, make):
    with pytest.raises(UsageError, match=r"^space: got .*expected a readable YAML file") as caught:
        load_space(str(make(tmp_path)))
    assert "\n" not in str(caught.value)


def test_unknown_name_lists_the_shipped_spaces():
    with pytest.raises(UsageError, match=r"^space: got 'nonesuch', expected one of cpu, default, smoke"):
        load_space("nonesuch")


def test_base_cycle(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: ./a.yaml\nmodel: x\n")
    with pytest.raises(UsageError, match=r"^base: .*cycle \(a.yaml -> b.yaml -> a.yaml\)"):
        load_space(str(tmp_path / "a.yaml"))


def test_base_chain_by_relative_path_and_null_deletes(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "mid.yaml").write_text("base: smoke\nbudget: {num_samples: 2}\n")
    (tmp_path / "sub" / "top.yaml").write_text(
        "base: ../mid.yaml\nsearch: {method: null, init: null, learning_rate: {uniform: [1e-2, 5e-2]}}\n"
        "fixed: {init: sample_vocab}\n"
    )
    spec = load_space(str(tmp_path / "sub" / "top.yaml"))
    assert spec.name == "top" and spec.budget.num_samples == 2 and spec.model == "bundled"
    assert "init" not in spec.search and spec.fixed["init"] == "sample_vocab"
    # 1e-2 is a number here (PyYAML alone reads it as a string), and the kind replaced loguniform.
    assert spec.search["learning_rate"] == Distribution(DistKind.UNIFORM, low=0.01, high=0.05)


def test_to_dict_round_trips_through_a_file(tmp_path):
    spec = load_space("smoke")
    resolved = spec.to_dict()
    body = {k: v for k, v in resolved.items() if k not in ("name", "source")}
    (tmp_path / "resolved.yaml").write_text(yaml.safe_dump(body))
    again = load_space(str(tmp_path / "resolved.yaml")).to_dict()
    assert {**again, "name": "smoke", "source": spec.source} == resolved


def test_train_config_merges_fixed_params_and_epochs():
    spec = load_space("smoke")
    config = spec.train_config(
        {
            "method": "prompt_tuning",
            "num_virtual_tokens": 8,
            "init.prompt_tuning": "random",
            "learning_rate.prompt_tuning": 0.05,
        }
    )
    assert (config.num_virtual_tokens, config.init, config.learning_rate) == (8, "random", 0.05)
    assert config.epochs == spec.budget.max_epochs == 2
    assert (config.batch_size, config.max_length, config.max_new_tokens) == (2, 384, 128)
    assert config.warmup_ratio == load_space("default").fixed["warmup_ratio"]


SMOKE_PT = {"method": "prompt_tuning", "num_virtual_tokens": 8, "init.prompt_tuning": "random"}


@pytest.mark.parametrize(
    "params,path",
    [
        (SMOKE_PT, "params.learning_rate.prompt_tuning"),
        ({**SMOKE_PT, "learning_rate.prompt_tuning": 0.1, "batch_size": 4}, "params.batch_size"),
        ({**SMOKE_PT, "num_virtual_tokens": 0, "learning_rate.prompt_tuning": 0.1}, "num_virtual_tokens"),
        ({**SMOKE_PT, "method": "p_tuning", "learning_rate.prompt_tuning": 0.1}, "params.method"),
    ],
)
def test_train_config_rejects_bad_params(params, path):
    with pytest.raises(UsageError, match=rf"^{path}:"):
        load_space("smoke").train_config(params)


def test_with_overrides_revalidates():
    spec = load_space("default")
    changed = spec.with_overrides(model="bundled", num_samples=2, max_concurrent=1)
    assert (changed.model, changed.budget.num_samples, changed.budget.max_concurrent) == ("bundled", 2, 1)
    assert spec.budget.num_samples == 48 and spec.with_overrides() == spec
    with pytest.raises(UsageError, match=r"^budget\.num_samples: got 0"):
        spec.with_overrides(num_samples=0)
    with pytest.raises(UsageError, match=r"^budget\.max_concurrent: got 0"):
        spec.with_overrides(max_concurrent=0)
    with pytest.raises(UsageError, match=r"^model: got ''"):
        spec.with_overrides(model="")


def test_spaces_import_no_search_stack():
    # Spaces describe values; loading one must not pull in Ray, Optuna, torch or the driver.
    code = (
        "import sys, spaces; spaces.load_space('default'); "
        "print([m for m in ('ray', 'optuna', 'torch', 'search') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(spaces.__file__).resolve().parent.parent,
    )
    assert out.stdout.strip() == "[]"


def test_yaml_off_on_yes_no_stay_what_the_user_wrote(tmp_path):
    space = tmp_path / "s.yaml"
    space.write_text("base: smoke\nsearch: {init: {choice: [random, off, yes, On]}}\nfixed: {weight_decay: 0}\n")
    assert load_space(str(space)).search["init"].values == ("random", "off", "yes", "On")
    space.write_text("base: smoke\nfixed: {weight_decay: off}\n")
    with pytest.raises(UsageError, match=r"^fixed.weight_decay: got 'off', expected"):
        load_space(str(space))


def test_a_yaml_alias_bomb_is_refused_before_it_is_built(tmp_path):
    """A 1 KB file of aliases nine deep is 9^9 values: before, MemoryError after 2.5 GB."""
    lines = ["base: smoke", 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    space = tmp_path / "bomb.yaml"
    space.write_text("\n".join(lines) + "\n")
    with pytest.raises(UsageError, match=r"expands to more than \d+ values") as caught:
        load_space(str(space))
    assert "\n" not in str(caught.value)


def test_a_ten_thousand_character_init_text_is_one_short_line_in_errors(tmp_path):
    text = "x" * 10_000
    space = tmp_path / "long.yaml"
    space.write_text(f"base: smoke\nsearch: {{init: {{choice: [random, '{text}', '{text}']}}}}\n")
    with pytest.raises(UsageError) as caught:
        load_space(str(space))
    message = str(caught.value)
    assert message.startswith("search.init.choice[2]: got 'xxx") and "(10002 chars)" in message
    assert len(message) < 300
