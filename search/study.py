"""The search's Optuna study (`runs/NAME/optuna.db`) and what its record says it must hold.

The study says which trials exist and what each scored; Tune's snapshot and MLflow refer to its
trials by number. A study that is missing or another one (a deleted or copied optuna.db) would
number its trials from 0 again, and a resumed search would write them over the finished trials'
MLflow runs. So a new study is stamped with the search's id, the record (`search.json`) keeps
its name, that id and how many trials it had, and `--resume` refuses any other study.
"""

from __future__ import annotations

from pathlib import Path

import optuna

STUDY_FILE = "optuna.db"
SEARCH_ID_ATTR = "search_id"


def study_storage_url(state_dir) -> str:
    return f"sqlite:///{state_dir}/{STUDY_FILE}"


def open_study(state_dir, study_name: str, search_id: str) -> dict:
    """Create the search's study (as Ray's OptunaSearch does: maximize, loaded if it exists),
    stamped with `search_id`; returns what the record keeps of it."""
    study = optuna.create_study(
        study_name=study_name, storage=study_storage_url(state_dir), direction="maximize", load_if_exists=True
    )
    study.set_user_attr(SEARCH_ID_ATTR, search_id)
    return {"name": study_name, SEARCH_ID_ATTR: search_id, "trials": len(study.get_trials(deepcopy=False))}


def _load(state_dir, study_name: str) -> optuna.Study:
    """The study, read without creating tables or files."""
    storage = optuna.storages.RDBStorage(study_storage_url(state_dir), skip_table_creation=True)
    return optuna.load_study(study_name=study_name, storage=storage)


def with_trials(kept: dict | None, state_dir) -> dict | None:
    """`kept` with the study's trial count now (unchanged if the study cannot be read)."""
    if kept is None:
        return None
    try:
        return {**kept, "trials": len(_load(state_dir, kept["name"]).get_trials(deepcopy=False))}
    except Exception:  # noqa: BLE001 - a record is still worth writing without the newest count
        return kept


def study_problem(state_dir, kept: dict) -> str | None:
    """Why the study in `state_dir` is not the one the record `kept` (None if it is)."""
    db = Path(state_dir) / STUDY_FILE
    if not db.is_file():
        return f"{db} is missing"
    try:
        study = _load(state_dir, kept["name"])
    except Exception as exc:  # noqa: BLE001 - an unreadable file or no such study: not ours either way
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        return f"{db} holds no readable study {kept['name']!r} ({first})"
    if study.user_attrs.get(SEARCH_ID_ATTR) != kept[SEARCH_ID_ATTR]:
        return f"{db} holds another search's study"
    have = len(study.get_trials(deepcopy=False))
    if have < kept["trials"]:
        return f"{db} holds {have} trial(s) where the search had {kept['trials']}"
    return None
