import pytest

from trainable.data import DataSplit, load_problems, problems_for, split_task_ids
from trainable.errors import UsageError


def test_splits_are_disjoint_deterministic_and_sized():
    split = DataSplit(train=64, val=40, test=60)
    ids = split_task_ids(split)
    assert {k: len(v) for k, v in ids.items()} == {"train": 64, "val": 40, "test": 60}
    every = ids["train"] + ids["val"] + ids["test"]
    assert len(set(every)) == 164 == len(load_problems())
    assert split_task_ids(DataSplit(64, 40, 60)) == ids
    assert split_task_ids(DataSplit(64, 40, 60, seed=1)) != ids


def test_smaller_splits_are_prefixes_of_the_same_order():
    small, large = split_task_ids(DataSplit(4, 4, 8)), split_task_ids(DataSplit(64, 40, 60))
    assert set(small["train"]) <= set(large["train"])


@pytest.mark.parametrize("sizes, field", [
    ((100, 40, 60), "data"), ((-1, 40, 60), "data.train"), ((10, 0, 10), "data.val"), ((1.5, 4, 4), "data.train"),
])
def test_bad_sizes_name_the_field(sizes, field):
    with pytest.raises(UsageError, match=f"^{field}: got"):
        DataSplit(*sizes)


def test_unknown_split_is_a_usage_error():
    with pytest.raises(UsageError, match="^split: got 'dev'"):
        problems_for("dev")
