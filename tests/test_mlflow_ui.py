"""MLflow's own web UI shows a finished search: a real headless Chromium against
`python -m mlflow_server` serving the sqlite store that `python -m search.run` wrote.

Chromium is Debian's package (`apt-get install -y --no-install-recommends chromium
fonts-dejavu-core`), driven through its command line (`--dump-dom`, `--screenshot`); no browser
is downloaded. The test is skipped only when `chromium` is not installed.

Pages (MLflow 3.17's hash routes, from mlflow/server/js/build):
- runs table `#/experiments/<id>/runs?searchFilter=...&orderByKey=...`: with a search filter and
  a sort other than "Created" the table lists child runs flat (by default they are folded under
  their parent behind an expander);
- compare view `#/compare-runs?runs=<JSON list of run ids>&experiments=<JSON list of ids>`
  (Routes.getCompareRunPageRoute), URL-encoded;
- the link the driver prints (`mlflow ui`): `#/experiments/<id>/runs?viewStateShareKey=<search
  id>&workflowType=machine_learning`, the search's shared view in the model-training view
  (search.tracking says why both).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest

from cluster_helpers import base_env, new_marker, reap_marked, start_mlflow_server
from search_helpers import run_search, write_space

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium")
SEARCH_NAME = "ui"
SEARCHED_PARAMS = ("num_virtual_tokens", "init", "learning_rate")
METRIC = "val_pass_at_1"


@pytest.fixture(scope="module")
def served_search(tiny_model_dir, tmp_path_factory):
    """A finished 4-trial search, its MLflow store served by `python -m mlflow_server`."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y --no-install-recommends chromium)")
    tmp = tmp_path_factory.mktemp("mlflow-ui")
    space = write_space(tmp, samples=4, epochs=2)
    proc = run_search(tmp, space, tiny_model_dir, SEARCH_NAME)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (tmp / "search-stdout.txt").write_text(proc.stdout)  # its `mlflow ui` link, for the view test
    marker = new_marker()
    server = start_mlflow_server(tmp, tmp / "runs" / "mlflow.db", tmp / "runs" / "mlartifacts", base_env(marker))
    try:
        yield tmp, server.url, marker
    finally:
        server.stop()
        survivors = reap_marked(marker, grace_s=20)
        assert not survivors, f"processes outlived the teardown (killed now): {survivors}"


def _chromium(tmp: Path, marker: str, url: str, *, screenshot: Path | None = None, budget_ms: int = 20000) -> str:
    profile = tmp / "chromium-profile"
    env = base_env(
        marker,
        HOME=str(tmp / "home"),
        XDG_CONFIG_HOME=str(tmp / "home" / ".config"),
        XDG_CACHE_HOME=str(tmp / "home" / ".cache"),
    )
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={budget_ms}",
        "--window-size=1600,1000",
    ]
    cmd += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    proc = subprocess.run(
        [*cmd, url], env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, cwd=tmp
    )
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}"
    return proc.stdout


def _dom_with(tmp: Path, marker: str, url: str, needles: list[str], attempts: int = 4) -> str:
    """The page's DOM once it shows every needle (a slow first render gets a longer budget)."""
    dom = ""
    for attempt in range(attempts):
        dom = _chromium(tmp, marker, url, budget_ms=20000 * (attempt + 1))
        if all(n in dom for n in needles):
            return dom
        time.sleep(1)
    missing = [n for n in needles if n not in dom]
    pytest.fail(f"{url}: {missing} not shown after {attempts} loads; DOM tail:\n{dom[-3000:]}")


def _text(name: str) -> str:
    """A text node exactly `name` (not a substring of another word)."""
    return f">{name}<"


def _runs(url: str):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name("softprompt-search")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return experiment.experiment_id, parent, children


def test_runs_page_lists_every_trial(served_search):
    tmp, url, marker = served_search
    exp_id, parent, children = _runs(url)
    assert len(children) == 4 and parent.info.run_name == SEARCH_NAME
    names = [c.info.run_name for c in children]
    assert all(re.fullmatch(r"optuna-\d+|[0-9a-f]{8}", n) for n in names), names

    query = urllib.parse.urlencode(
        {
            "searchFilter": f"tags.search_name = '{SEARCH_NAME}'",
            "orderByKey": "tags.`mlflow.runName`",
            "orderByAsc": "true",
        },
        quote_via=urllib.parse.quote,
    )
    page = f"{url}/#/experiments/{exp_id}/runs?{query}"
    _dom_with(tmp, marker, page, [_text(n) for n in [*names, SEARCH_NAME]])
    shot = tmp / "mlflow-runs.png"
    _chromium(tmp, marker, page, screenshot=shot)
    assert shot.stat().st_size > 20_000
    print(f"\n[mlflow-ui] runs page {page}\n[mlflow-ui] screenshot {shot}")


def test_compare_view_shows_searched_params_and_metric(served_search):
    tmp, url, marker = served_search
    exp_id, _, children = _runs(url)
    ids = [c.info.run_id for c in children]
    assert all(set(SEARCHED_PARAMS) <= set(c.data.params) and METRIC in c.data.metrics for c in children)
    query = (
        f"runs={urllib.parse.quote(json.dumps(ids), safe='')}"
        f"&experiments={urllib.parse.quote(json.dumps([exp_id]), safe='')}"
    )
    page = f"{url}/#/compare-runs?{query}"
    dom = _dom_with(
        tmp,
        marker,
        page,
        [_text(p) for p in (*SEARCHED_PARAMS, METRIC)]
        + [_text(c.info.run_name) for c in children]
        + [f"Comparing {len(ids)} Runs"],
    )
    for param in SEARCHED_PARAMS:  # a row of the run-details table, not only a chart label
        assert re.search(rf"<th[^>]*>{param}</th>", dom), param
    shot = tmp / "mlflow-compare.png"
    _chromium(tmp, marker, page, screenshot=shot)
    assert shot.stat().st_size > 20_000
    print(f"\n[mlflow-ui] compare page {page}\n[mlflow-ui] screenshot {shot}")


def test_the_printed_link_opens_the_model_training_view_with_metric_columns(served_search):
    """Before: MLflow opened the experiment as GenAI ("Evaluation runs", no metric columns)."""
    tmp, url, marker = served_search
    _, parent, children = _runs(url)
    line = next(s for s in (tmp / "search-stdout.txt").read_text().splitlines() if s.startswith("mlflow ui "))
    link = line.split()[2]  # `mlflow ui     http://127.0.0.1:5000/#/...  (after: python -m mlflow_server)`
    page = url + link[link.index("/#/") :]
    assert f"viewStateShareKey={parent.data.tags['search_id']}" in page and "workflowType=machine_learning" in page
    # The view's init column is the readable `init_label` tag, not the param's hash (search_view).
    shown = ["init_label" if p == "init" else p for p in SEARCHED_PARAMS]
    labels = {c.data.tags["init_label"] for c in children}
    needles = [_text(c.info.run_name) for c in children] + [
        _text(n) for n in ("Metrics", "Parameters", METRIC, *shown, *labels)
    ]
    dom = _dom_with(tmp, marker, page, needles)
    assert _text("Runs") in dom and "Evaluation" not in dom, "not the model-training view"
    shot = tmp / "mlflow-runs-model-training.png"
    _chromium(tmp, marker, page, screenshot=shot)
    assert shot.stat().st_size > 20_000
    # The control: the same page without the view query is MLflow's GenAI view, so the assertions
    # above can fail.
    _dom_with(tmp, marker, page.replace("&workflowType=machine_learning", ""), [_text("Evaluation runs")])
    print(f"\n[mlflow-ui] model-training view {page}\n[mlflow-ui] screenshot {shot}")


def test_the_parent_run_has_the_learning_curves(served_search):
    tmp, url, _ = served_search
    import mlflow

    _, parent, _ = _runs(url)
    curves = Path(
        mlflow.MlflowClient(tracking_uri=url).download_artifacts(
            parent.info.run_id, "report/plots/learning_curves.png", str(tmp)
        )
    )
    assert curves.read_bytes()[:4] == b"\x89PNG" and curves.stat().st_size > 10_000
    print(f"\n[mlflow-ui] learning curves {curves}")
