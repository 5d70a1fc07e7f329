"""`snapshot_problem`: whether Tune can resume the experiment snapshot a killed driver left.

The files are named as Tune names them (its own templates) and hold what Tune writes (a JSON
trial list, pickles); a whole search killed mid-copy is in tests/test_search_resume.py.

    .venv/bin/pytest tests/test_tune_snapshot.py -q
"""

from __future__ import annotations

import json
import pickle

import pytest

from search.tuner import SNAPSHOT_FILES, snapshot_problem

SESSIONS = ("2026-12-01_10-00-00", "2026-12-01_11-00-00")


def _write_snapshot(root, session: str) -> dict:
    paths = {}
    for template in SNAPSHOT_FILES:
        path = root / template.format(session)
        if template.startswith("experiment_state"):
            path.write_text(json.dumps({"trial_data": [["{}", "{}"]], "runner_data": {}}))
        else:
            path.write_bytes(pickle.dumps({"counter": 2, "_ot_trials": {"a": 0, "b": 1}}))
        paths[template] = path
    return paths


def test_a_whole_snapshot_resumes(tmp_path):
    _write_snapshot(tmp_path, SESSIONS[0])
    assert snapshot_problem(str(tmp_path)) is None


@pytest.mark.parametrize("template", list(SNAPSHOT_FILES))
@pytest.mark.parametrize("keep", [0, 0.5, 0.99])
def test_a_file_cut_short_is_named(tmp_path, template, keep):
    path = _write_snapshot(tmp_path, SESSIONS[0])[template]
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    problem = snapshot_problem(str(tmp_path))
    assert problem is not None and problem.startswith(f"{path.name} is cut short or unreadable")


@pytest.mark.parametrize("template", list(SNAPSHOT_FILES))
def test_a_missing_file_is_named(tmp_path, template):
    _write_snapshot(tmp_path, SESSIONS[0])[template].unlink()
    assert snapshot_problem(str(tmp_path)) == f"no {template.format('*')}"


def test_only_the_newest_of_each_file_counts_as_tune_reads_only_that(tmp_path):
    older, newer = (_write_snapshot(tmp_path, session) for session in SESSIONS)
    template = list(SNAPSHOT_FILES)[-1]
    older[template].write_bytes(b"\x80")  # cut short, but Tune reads the newer one
    assert snapshot_problem(str(tmp_path)) is None
    newer[template].write_bytes(b"")
    assert snapshot_problem(str(tmp_path)).startswith(newer[template].name)


def test_no_experiment_at_all(tmp_path):
    assert snapshot_problem(str(tmp_path / "never-ran")) == f"no {list(SNAPSHOT_FILES)[0].format('*')}"
