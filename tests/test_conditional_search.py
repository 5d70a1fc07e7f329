"""`method` as a searched, conditional dimension: what reaches Optuna, what the space refuses.

.venv/bin/pytest tests/test_conditional_search.py -q
"""

from __future__ import annotations

import optuna
import pytest
import torch

from spaces import load_space
from trainable.config import TrainConfig
from softprompt_cli.errors import UsageError
from trainable.trial import OBJECTIVE


def _space(tmp_path, text: str, name: str = "space.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return load_space(str(path))


def _expected_names(spec, method: str) -> set[str]:
    return {"method"} | {name for name, _, _ in spec.sampled(method)}


def test_conditional_parameters_never_reach_optuna_for_another_method(tmp_path):
    """Drive the real searcher (Ray's OptunaSearch + our define-by-run space) through 30 trials,
    past TPE's random start-up, then read the study back from its sqlite file."""
    from search.searcher import build_searcher

    spec = load_space("default")
    searcher = build_searcher(spec, tmp_path, "conditional")
    for i in range(30):
        config = searcher.suggest(f"t{i}")
        method = config["method"]
        assert set(config) == _expected_names(spec, method)
        assert spec.train_config(config).method == method  # every suggestion is a valid trial
        score = {"prompt_tuning": 0.5, "p_tuning": 0.3, "prefix_tuning": 0.4}[method] + i / 1000
        searcher.on_trial_complete(f"t{i}", {OBJECTIVE: score, "training_iteration": spec.budget.max_epochs})
    study = optuna.load_study(study_name="conditional", storage=f"sqlite:///{tmp_path}/optuna.db")
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 30 and {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
    seen = set()
    for trial in trials:
        method = trial.params["method"]
        seen.add(method)
        assert set(trial.params) == _expected_names(spec, method), (method, trial.params)
    assert seen == {"prompt_tuning", "p_tuning", "prefix_tuning"}
    p_tuning = [t for t in trials if t.params["method"] == "p_tuning"]
    assert all("encoder_hidden_size" in t.params and "prefix_projection" not in t.params for t in p_tuning)
    assert all("init.prompt_tuning" not in t.params for t in p_tuning)


def test_trial_params_name_fields_and_always_carry_method(tmp_path):
    spec = load_space("default")
    params = spec.trial_params(
        {"method": "p_tuning", "num_virtual_tokens": 8, "learning_rate.p_tuning": 0.01, "encoder_hidden_size": 128}
    )
    assert params == {"method": "p_tuning", "num_virtual_tokens": 8, "learning_rate": 0.01, "encoder_hidden_size": 128}
    fixed = _space(tmp_path, "base: smoke\nsearch: {method: null}\n")
    assert (
        fixed.trial_params(
            {"num_virtual_tokens": 4, "init.prompt_tuning": "random", "learning_rate.prompt_tuning": 0.1}
        )["method"]
        == "prompt_tuning"
    )


def test_plots_cope_with_conditional_parameters(tmp_path):
    """The parent run's plots come from a study whose trials hold different parameters."""
    from search.report import save_plots
    from search.searcher import build_searcher

    spec = load_space("default")
    searcher = build_searcher(spec, tmp_path, "plots")
    for i in range(8):
        searcher.suggest(f"t{i}")
        searcher.on_trial_complete(f"t{i}", {OBJECTIVE: i / 10, "training_iteration": spec.budget.max_epochs})
    written = save_plots("plots", f"sqlite:///{tmp_path}/optuna.db", tmp_path / "plots")
    assert {p.name for p in written} >= {"optimization_history.png", "parallel_coordinate.png"}


SPACE_ERRORS = {
    "unknown method": (
        "base: smoke\nsearch: {method: {choice: [prompt_tuning, lora]}}\n",
        "search.method.choice[1]",
        "one of prompt_tuning, p_tuning, prefix_tuning",
    ),
    "method as a range": ("base: smoke\nsearch: {method: {uniform: [0, 1]}}\n", "search.method", "a choice"),
    "method per method": (
        "base: smoke\nsearch: {method: {p_tuning: {choice: [p_tuning]}}}\n",
        "search.method",
        "a choice",
    ),
    "fixed unknown method": (
        "base: smoke\nsearch: {method: null}\nfixed: {method: lora}\n",
        "fixed.method",
        "one of prompt_tuning",
    ),
    "method-only param searched without its method": (
        "base: smoke\nsearch: {encoder_hidden_size: {choice: [64, 128]}}\n",
        "search.encoder_hidden_size",
        "no value: only another method uses it",
    ),
    "method-only param fixed without its method": (
        "base: smoke\nfixed: {encoder_hidden_size: 64}\n",
        "fixed.encoder_hidden_size",
        "no value",
    ),
    "per-method entry for a field the method lacks": (
        "base: default\nsearch: {prefix_projection: {p_tuning: {choice: [0, 8]}}}\n",
        "search.prefix_projection.p_tuning",
        "method p_tuning has no prefix_projection",
    ),
    "text init for every method": (
        "base: default\nsearch: {init: {choice: [random, 'Write code.']}}\n",
        "search.init.choice[1]",
        "for method p_tuning (P-tuning's embeddings pass through an MLP",
    ),
    "text init with a prefix projection": (
        "base: smoke\nsearch: {prefix_projection: {choice: [0, 64]}}\n",
        "search.init.prefix_tuning.choice[0]",
        "for method prefix_tuning with prefix_projection 64 (a token init sets the key/values directly",
    ),
    "vocab init fixed, p_tuning searched": (
        "base: default\nsearch: {init: null}\nfixed: {init: sample_vocab}\n",
        "fixed.init",
        "for method p_tuning",
    ),
    "float range over a method's integer field": (
        "base: default\nsearch: {encoder_hidden_size: {loguniform: [64, 512]}}\n",
        "search.encoder_hidden_size.loguniform",
        "randint or choice",
    ),
    "per-method entry not a distribution": (
        "base: default\nsearch: {learning_rate: {p_tuning: 0.1}}\n",
        "search.learning_rate.p_tuning",
        "a mapping",
    ),
    "per-method keys mixed with kinds": (
        "base: default\nsearch: {learning_rate: {p_tuning: {uniform: [0.1, 0.2]}, choice: [1]}}\n",
        "search.learning_rate.choice",
        "one of prompt_tuning, p_tuning, prefix_tuning",
    ),
}


@pytest.mark.parametrize("text, path, message", SPACE_ERRORS.values(), ids=SPACE_ERRORS.keys())
def test_space_refuses_what_a_method_cannot_use(tmp_path, text, path, message):
    with pytest.raises(UsageError) as caught:
        _space(tmp_path, text)
    line = str(caught.value)
    assert line.startswith(path + ":") and message in line and "\n" not in line, line


def test_a_narrowing_preset_keeps_other_methods_entries(tmp_path):
    """A per-method entry for a method the space does not pick is inert, so `base: default` with one
    method fixed needs to drop only that method's own parameters."""
    spec = _space(
        tmp_path, "base: default\nsearch: {method: null, encoder_hidden_size: null}\nfixed: {method: prefix_tuning}\n"
    )
    assert spec.methods == ("prefix_tuning",)
    assert [name for name, _, _ in spec.sampled("prefix_tuning")] == [
        "num_virtual_tokens",
        "init.prefix_tuning",
        "learning_rate.prefix_tuning",
    ]


@pytest.fixture()
def saved_adapters(tiny_loaded, tmp_path):
    from trainable.softprompt import SoftPrompt

    out = {}
    for name, settings in {
        "pt8": {"num_virtual_tokens": 8},
        "prefix8": {"num_virtual_tokens": 8, "method": "prefix_tuning"},
    }.items():
        out[name] = SoftPrompt.create(tiny_loaded, TrainConfig(**settings)).save(tmp_path / name)
    return out


def test_warm_start_among_init_choices_fixes_the_shape(tmp_path, saved_adapters, monkeypatch):
    pt8 = saved_adapters["pt8"]
    ok = _space(
        tmp_path,
        f"base: smoke\nsearch: {{method: null, num_virtual_tokens: {{choice: [8]}},"
        f" init: {{choice: [random, 'adapter:{pt8}']}}}}\n",
    )
    assert ok.search["init"].values[1] == f"adapter:{pt8}"
    monkeypatch.chdir(tmp_path.parent)  # a relative PATH is taken from the working directory, like --model
    relative = _space(
        tmp_path,
        "base: smoke\nsearch: {method: null, init: null, num_virtual_tokens: {choice: [8]}}\n"
        f"fixed: {{init: 'adapter:{pt8.relative_to(tmp_path.parent)}'}}\n",
        "rel.yaml",
    )
    assert relative.fixed["init"] == f"adapter:{pt8}", "a relative adapter path is made absolute for the trials"
    with pytest.raises(UsageError) as caught:
        _space(tmp_path, f"base: smoke\nsearch: {{method: null, init: {{choice: [random, 'adapter:{pt8}']}}}}\n")
    line = str(caught.value)
    assert line.startswith(
        f"search.init.choice[1]: got 'adapter:{pt8}', expected a soft prompt of the trial's "
        "shape: num_virtual_tokens 4 (this adapter has 8) (with search.num_virtual_tokens.choice[0] = 4)"
    )


def test_warm_start_of_another_method_in_a_method_search(tmp_path, saved_adapters):
    prefix8 = saved_adapters["prefix8"]
    with pytest.raises(
        UsageError,
        match=r"^search\.init\.prompt_tuning\.choice\[1\]: got .*method 'prompt_tuning' "
        r"\(this adapter has 'prefix_tuning'\)",
    ):
        _space(
            tmp_path,
            f"base: smoke\nsearch: {{num_virtual_tokens: {{choice: [8]}},"
            f" init: {{prompt_tuning: {{choice: [random, 'adapter:{prefix8}']}}}}}}\n",
        )
    spec = _space(
        tmp_path,
        f"base: smoke\nsearch: {{num_virtual_tokens: {{choice: [8]}},"
        f" init: {{prefix_tuning: {{choice: [random, 'adapter:{prefix8}']}}}}}}\n",
    )
    assert spec.warm_starts("prefix_tuning") == [("search.init.prefix_tuning.choice[1]", f"adapter:{prefix8}")]


def test_prefix_key_values_are_not_prompt_embeddings():
    """Prefix `output()` is PEFT's flat key/value layout; a Prefix never goes through inputs_embeds."""
    from trainable.inputs import Prefix

    flat = torch.arange(3 * 2 * 2 * 2 * 4, dtype=torch.float32).view(3, -1)  # P=3, 2 layers, 2 heads, dim 4
    prefix = Prefix.from_flat(flat, num_layers=2, num_heads=2)
    # PEFT: view [P, layers*2, heads, dim] -> permute [layers*2, heads, P, dim]; 2l = key, 2l+1 = value.
    peft = flat.view(3, 4, 2, 4).permute(1, 2, 0, 3)
    assert torch.equal(prefix.keys[1], peft[2]) and torch.equal(prefix.values[1], peft[3])
    cache = prefix.cache(batch=2, dtype=torch.float32)
    assert cache.get_seq_length() == 3 and cache.layers[0].keys.shape == (2, 2, 3, 4)


@pytest.fixture(scope="module")
def cli_adapters(tmp_path_factory, tiny_model_dir):
    """An adapter saved on the tiny model (hidden 48), and a second tiny model of hidden size 32."""
    from trainable.model.loading import load_model
    from trainable.softprompt import SoftPrompt
    from trainable.tiny import tiny_model, tiny_tokenizer

    tmp = tmp_path_factory.mktemp("cli-adapters")
    loaded = load_model(str(tiny_model_dir), device="cpu", dtype=torch.float32)
    out = {"pt4": SoftPrompt.create(loaded, TrainConfig(num_virtual_tokens=4)).save(tmp / "pt4")}
    tokenizer = tiny_tokenizer()
    narrow = tiny_model(len(tokenizer), hidden=32)
    narrow.config.eos_token_id, narrow.config.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    narrow.save_pretrained(tmp / "narrow")
    tokenizer.save_pretrained(tmp / "narrow")
    out["narrow"] = tmp / "narrow"
    return out


FIXED_PT = "base: smoke\nsearch: {{method: null, init: null, num_virtual_tokens: {{choice: [TOKENS]}}}}\n"
# The space-level refusals are tested in-process above; these show the command's contract (exit 2,
# one line, nothing started) for each bad input the issue names.
CLI_CASES = {
    "unknown method": (
        "base: smoke\nsearch: {{method: {{choice: [prompt_tuning, lora]}}}}\n",
        None,
        "search.method.choice[1]: got 'lora'",
    ),
    "method-only parameter searched without its method": (
        "base: smoke\nsearch: {{encoder_hidden_size: {{choice: [64, 128]}}}}\n",
        None,
        "search.encoder_hidden_size: got {'choice': [64, 128]}, expected no value: only another method uses it",
    ),
    "warm start from a missing dir": (
        FIXED_PT.replace("TOKENS", "4") + "fixed: {{init: 'adapter:{pt4}/missing'}}\n",
        None,
        "(not found)",
    ),
    "warm start of another method": (
        FIXED_PT.replace("TOKENS", "4") + "fixed: {{method: prefix_tuning, init: 'adapter:{pt4}'}}\n",
        None,
        "method 'prefix_tuning' (this adapter has 'prompt_tuning')",
    ),
    "warm start with another token count": (
        FIXED_PT.replace("TOKENS", "8") + "fixed: {{init: 'adapter:{pt4}'}}\n",
        None,
        "num_virtual_tokens 8 (this adapter has 4)",
    ),
    "warm start on another hidden size": (
        FIXED_PT.replace("TOKENS", "4") + "fixed: {{init: 'adapter:{pt4}'}}\n",
        "narrow",
        "hidden size 32 (this adapter has 48)",
    ),
}


@pytest.mark.parametrize("text, model, message", CLI_CASES.values(), ids=CLI_CASES.keys())
def test_search_refuses_bad_methods_and_warm_starts_before_anything_starts(
    tmp_path, tiny_model_dir, cli_adapters, search_cli, text, model, message
):
    space = tmp_path / "bad.yaml"
    space.write_text(text.format(**cli_adapters))
    model_dir = cli_adapters[model] if model else tiny_model_dir
    # `python -m search.run ...`, forked from an interpreter that imported it (conftest's search_cli)
    proc = search_cli("--space", str(space), "--model", str(model_dir), "--dry-run", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and message in line and "Traceback" not in proc.stderr, line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("path", ["x" * 5000, "~no-such-user-xyz/adapter"], ids=["too-long", "unknown-user"])
def test_a_warm_start_path_the_os_refuses_is_one_line(tmp_path, path):
    with pytest.raises(UsageError) as caught:
        _space(tmp_path, f"base: smoke\nsearch: {{method: null, init: null}}\nfixed: {{init: 'adapter:{path}'}}\n")
    line = str(caught.value)
    assert line.startswith("fixed.init: got ") and "(not found" in line and "\n" not in line, line
