import hashlib

import pytest

from spaces import SHIPPED_SPACES, load_space
from trainable.data import mbpp
from trainable.data.splits import (
    SOURCES,
    DataSplit,
    allocate,
    drawn,
    load_problems,
    problems_for,
    source_of,
    split_task_ids,
    benchmark_problems,
)
from softprompt_cli.errors import UsageError

needs_mbpp = pytest.mark.skipif(
    not mbpp.mbpp_file().is_file(), reason="MBPP not fetched: python -m trainable.data.mbpp"
)


def test_splits_are_disjoint_deterministic_and_sized():
    split = DataSplit(train=64, val=40, test=60)
    ids = split_task_ids(split)
    assert {k: len(v) for k, v in ids.items()} == {"train": 64, "val": 40, "test": 60}
    every = ids["train"] + ids["val"] + ids["test"]
    assert len(set(every)) == 164 == len(load_problems())
    assert split_task_ids(DataSplit(64, 40, 60)) == ids
    assert split_task_ids(DataSplit(64, 40, 60, seed=1)) != ids


def test_humaneval_short_form_draws_what_it_always_drew():
    """The order and slicing of the one-source days: a search resumed across this change, or an
    adapter saved before it, still sees its own problems."""
    order = sorted(load_problems(), key=lambda t: hashlib.sha256(f"0:{t}".encode()).hexdigest())
    ids = split_task_ids(DataSplit(64, 40, 60))
    assert set(ids["train"]) == set(order[:64]) and set(ids["val"]) == set(order[64:104])
    assert set(ids["test"]) == set(order[104:164])


def test_smaller_splits_are_prefixes_of_the_same_order():
    small, large = split_task_ids(DataSplit(4, 4, 8)), split_task_ids(DataSplit(64, 40, 60))
    assert set(small["train"]) <= set(large["train"])


def test_a_bare_number_is_humaneval_and_a_mapping_names_its_source():
    split = DataSplit(train={"source": "mbpp", "n": 300}, val=64, test={"n": 100})
    assert (split.train.source, split.val.source, split.test[0].source) == ("mbpp", "humaneval", "humaneval")
    assert split.to_dict()["val"] == {"source": "humaneval", "n": 64}
    assert DataSplit.from_dict(split.to_dict()) == split
    assert split.needs_targets() and not DataSplit(4, 4, 4).needs_targets()


def test_the_default_split_is_the_default_space_s():
    assert load_space("default").data == DataSplit()
    assert DataSplit().to_dict()["train"] == {"source": "mbpp", "n": 397}


def _universes(split: DataSplit) -> dict:
    """Real task ids where the data is here, else as many stand-in ids as the source has."""
    out = {}
    for name in split.sources():
        try:
            out[name] = list(SOURCES[name].load())
        except UsageError:  # MBPP not fetched: the allocation only needs the ids' count
            out[name] = [f"{name}_{i}_stand_in" for i in range(SOURCES[name].size)]
    return out


@pytest.mark.parametrize("space", SHIPPED_SPACES)
def test_every_shipped_space_has_disjoint_splits_of_the_sizes_it_asks(space):
    split = load_space(space).data
    ids = allocate(split, _universes(split))
    assert {name: len(task_ids) for name, task_ids in ids.items()} == {n: p.n for n, p in split.parts().items()}
    every = [task_id for task_ids in ids.values() for task_id in task_ids]
    assert len(every) == len(set(every)), "a problem is in two splits"
    assert allocate(split, _universes(split)) == ids  # deterministic


def test_a_source_s_splits_depend_on_that_source_alone():
    a = split_task_ids(DataSplit(train={"source": "mbpp", "n": 10}, val=64, test=100), {"humaneval"})
    b = split_task_ids(DataSplit(train={"source": "mbpp", "n": 300}, val=64, test=100), {"humaneval"})
    assert a == b and set(a) == {"val", "test"}


def test_explicit_ids_are_kept_out_of_drawn_splits():
    picked = ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    split = DataSplit(train=100, val={"source": "humaneval", "ids": picked}, test=61)
    ids = split_task_ids(split)
    assert ids["val"] == picked and split.val.n == 3
    assert DataSplit(val={"source": "humaneval", "n": 64, "ids": picked}).val == split.val  # ids win over n
    assert not set(picked) & (set(ids["train"]) | set(ids["test"]))
    assert len(set(ids["train"]) | set(ids["test"])) == 161


@needs_mbpp
def test_mbpp_splits_and_the_distill_command_draw_the_same_problems():
    split = DataSplit(train={"source": "mbpp", "n": 20}, val={"source": "mbpp", "n": 5}, test=10)
    ids = split_task_ids(split)
    assert [p["task_id"] for p in drawn("mbpp", 20)] == ids["train"]
    assert all(t.startswith("mbpp_") for t in ids["train"] + ids["val"])
    assert not set(ids["train"]) & set(ids["val"])
    assert [p["task_id"] for p in problems_for("train", split)] == ids["train"]


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"train": 100, "val": 40, "test": 60}, "data.test.n"),
        ({"train": -1, "val": 40, "test": 60}, "data.train"),
        ({"train": 10, "val": 0, "test": 10}, "data.val"),
        ({"train": 1.5, "val": 4, "test": 4}, "data.train"),
        ({"train": {"source": "apps", "n": 3}}, "data.train.source"),
        ({"train": {"source": ["mbpp"], "n": 3}}, "data.train.source"),
        ({"train": {"source": None, "n": 3}}, "data.train.source"),
        ({"test": {"source": "humaneval", "n": True}}, "data.test.n"),
        ({"val": {"source": "humaneval", "ids": [["HumanEval/1"]]}}, "data.val.ids"),
        ({"val": "64"}, "data.val"),
        ({"distill": 5}, "data.distill"),
        ({"distill": {"targets": 5}}, "data.distill.targets"),
        ({"distill": {"temperature": "hot"}}, "data.distill.temperature"),
        ({"distill": {"samples": 1.5}}, "data.distill.samples"),
        ({"train": {"source": "mbpp", "n": 398}}, "data.train.n"),
        ({"train": {"source": "mbpp", "n": 390}, "val": {"source": "mbpp", "n": 8}}, "data.val.n"),
        ({"train": {"source": "mbpp", "n": 10, "shuffle": True}}, "data.train.shuffle"),
        ({"val": {"source": "humaneval", "ids": ["HumanEval/1", "HumanEval/1"]}}, "data.val.ids"),
        (
            {
                "val": {"source": "humaneval", "ids": ["HumanEval/1"]},
                "test": {"source": "humaneval", "ids": ["HumanEval/1"]},
            },
            "data.test.ids",
        ),
        ({"val": {"source": "humaneval", "ids": "HumanEval/1"}}, "data.val.ids"),
        ({"seed": -1}, "data.seed"),
        ({"test": []}, "data.test"),
        ({"test": [{"source": "humaneval", "n": 5}, {"source": "humaneval", "n": 5}]}, "data.test[1].source"),
        ({"test": [{"source": "humaneval", "n": 5}, {"source": "mbpp", "n": 398}]}, "data.test[1].n"),
        ({"test": [{"source": "humaneval", "n": 5}, {"source": "nope", "n": 3}]}, "data.test[1].source"),
        ({"test": [{"source": "humaneval", "n": 5}, {"source": "mbpp", "n": -2}]}, "data.test[1].n"),
        ({"distill": {"samples": -1}}, "data.distill.samples"),
        ({"distill": {"temperature": 0}}, "data.distill.temperature"),
        ({"distill": {"top_p": 1.5}}, "data.distill.top_p"),
        ({"distill": {"k": 4}}, "data.distill.k"),
        ({"distill": {"targets": ""}}, "data.distill.targets"),
    ],
)
def test_bad_splits_name_the_field(kwargs, field):
    with pytest.raises(UsageError) as caught:
        DataSplit(**kwargs)
    assert str(caught.value).startswith(f"{field}: got "), str(caught.value)
    assert "\n" not in str(caught.value)


def test_an_unknown_explicit_id_names_its_position():
    split = DataSplit(val={"source": "humaneval", "ids": ["HumanEval/3", "HumanEval/999"]})
    with pytest.raises(UsageError, match=r"^data\.val\.ids\[1\]: got 'HumanEval/999', expected a task id of humaneval"):
        split_task_ids(split, {"humaneval"})


def test_unknown_split_is_a_usage_error():
    with pytest.raises(UsageError, match="^split: got 'dev'"):
        problems_for("dev")


def test_test_may_list_one_split_per_benchmark_each_disjoint_from_train_and_val():
    split = DataSplit(
        train={"source": "mbpp", "n": 30},
        val=24,
        test=[{"source": "humaneval", "n": 140}, {"source": "mbpp", "n": 200}],
    )
    assert [(p.source, p.n) for p in split.test] == [("humaneval", 140), ("mbpp", 200)] and split.test_n == 340
    sets = benchmark_problems(split)
    assert list(sets) == ["humaneval", "mbpp"] and [len(v) for v in sets.values()] == [140, 200]
    ids = {name: set(v) for name, v in split_task_ids(split).items()}
    assert set(ids) == {"train", "val", "test[0]", "test[1]"}
    assert not ids["train"] & ids["test[1]"] and not ids["val"] & ids["test[0]"]
    assert [p["task_id"] for p in problems_for("test", split)] == [p["task_id"] for v in sets.values() for p in v]
    assert {source_of(p["task_id"]) for p in sets["mbpp"]} == {"mbpp"}
    # a list round-trips; one benchmark keeps the mapping form spaces write
    assert DataSplit.from_dict(split.to_dict()) == split
    assert DataSplit(test={"n": 100}).to_dict()["test"] == {"source": "humaneval", "n": 100}
    # the humaneval draws are those of a space whose test is humaneval alone
    alone = DataSplit(train={"source": "mbpp", "n": 30}, val=24, test=140)
    assert sets["humaneval"] == problems_for("test", alone)
