"""A search submitted to a real two-node Ray cluster with the real CLIs, as a user would:

    ray start --head ...            (1 CPU; GCS, dashboard / job server)
    ray start --address HEAD ...    (a second 1-CPU node)
    python -m mlflow_server --auth  (basic-auth MLflow server)
    ray job submit --working-dir <repo> --runtime-env-json '{"env_vars": {MLflow credentials}}'
        -- python -m search.run --space ... --mlflow-uri http://...

Both nodes run on this machine, each in its own --temp-dir (Ray advertises the machine's
routable IP for both, whatever --node-ip-address says; the job server listens on 127.0.0.1).
Each trial needs 1 CPU and the job's driver none, so two trials at a time must run on different
nodes; nodes are told apart by Ray node id.

Ray token authentication (read from the pinned ray): a new local cluster turns token auth on when RAY_AUTH_MODE
is unset and ~/.ray/auth_token exists, and then every `ray` command and every node must present
the same token. This test never touches ~/.ray: every process it starts gets RAY_AUTH_MODE=token,
a RAY_AUTH_TOKEN generated here, and HOME pointing into the test's own directory. On a real
cluster a user does the same with one secret: `export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=...`
(or RAY_AUTH_TOKEN_PATH=file) on the head, on every worker node, and wherever `ray job submit`
runs (see README "On a cluster").

Teardown stops what the test started by PID (SIGTERM to each `ray start --block`, then to the
MLflow server), never by name (`ray stop` would stop every Ray on the machine), and fails if any
process carrying this test's environment marker survives.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import secrets
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cluster_helpers import (
    BIN,
    REPO,
    RayNode,
    alive_nodes,
    base_env,
    free_ports,
    marked_processes,
    new_marker,
    ray_cli,
    reap_marked,
    start_mlflow_server,
)
from helpers import pinned
from search_helpers import write_space

pytestmark = pytest.mark.integration

USER, PASSWORD = "searcher", "cluster-test-password-1"
EXPERIMENT = "softprompt-search"
SEARCH_NAME = "cluster"
SAMPLES, EPOCHS = 4, 2
JOB_TIMEOUT_S = 420
# What `--working-dir` must not upload (.gitignore is honoured too; these make it explicit).
UPLOAD_EXCLUDES = [".venv", ".git", "runs", "mlruns", "**/__pycache__", ".pytest_cache", "*.egg-info", "build", "*.db"]


def _get(url: str, auth: tuple[str, str] | None = None) -> int:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.fixture()
def cluster(tmp_path):
    """A head + a worker node (1 CPU each) and an auth MLflow server; all stopped by PID after."""
    if importlib.util.find_spec("aiohttp_cors") is None:
        pytest.fail(
            f"the Ray job server (dashboard) needs ray[default]: pip install 'ray[default,tune]=={pinned('ray')}'"
        )
    marker = new_marker()
    home = tmp_path / "home"
    home.mkdir()
    # Unix socket paths (<temp-dir>/session_.../sockets/plasma_store) must stay under ~107 bytes:
    # pytest's tmp_path is too long for that, so Ray's temp dirs live in a short dir under /tmp.
    ray_tmp = Path(tempfile.mkdtemp(prefix="sps-ray-", dir="/tmp"))
    env = base_env(
        marker,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        HOME=str(home),
        # `python` in the job's entrypoint is the first one on the raylet's PATH: the venv's, as for
        # a user who started Ray from the activated environment the project is installed in.
        PATH=os.pathsep.join([str(BIN), os.environ.get("PATH", "/usr/bin:/bin")]),
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",  # SIGTERM: stop at once, no drain wait
    )
    gcs_port, dash_port = free_ports(2)
    gcs = f"127.0.0.1:{gcs_port}"
    nodes: list[RayNode] = []
    mlflow = None
    try:
        head = RayNode(
            "head",
            [
                "--head",
                f"--port={gcs_port}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dash_port}",
            ],
            env,
            ray_tmp / "head",
            tmp_path / "ray-head.log",
        )
        nodes.append(head)
        head.wait_started()
        worker = RayNode("worker", [f"--address={gcs}"], env, ray_tmp / "worker", tmp_path / "ray-worker.log")
        nodes.append(worker)
        worker.wait_started()
        deadline = time.monotonic() + 60
        while len(alive := alive_nodes(env, gcs)) < 2 and time.monotonic() < deadline:
            time.sleep(1)
        assert len(alive) == 2, f"expected 2 alive Ray nodes, got {alive}"

        mlflow_env = dict(env, MLFLOW_TRACKING_USERNAME=USER, MLFLOW_TRACKING_PASSWORD=PASSWORD)
        mlflow = start_mlflow_server(tmp_path, tmp_path / "mlflow.db", tmp_path / "mlartifacts", mlflow_env, "--auth")
        yield {
            "env": env,
            "gcs": gcs,
            "dashboard": f"http://127.0.0.1:{dash_port}",
            "nodes": {n["node_id"] for n in alive},
            "mlflow": mlflow.url,
            "tmp": tmp_path,
            "ray_tmp": ray_tmp,
        }
    finally:
        for node in reversed(nodes):  # the worker first, then the head (GCS last)
            node.stop()
        if mlflow is not None:
            mlflow.stop()
        survivors = reap_marked(marker, grace_s=30)
        shutil.rmtree(ray_tmp, ignore_errors=True)
        assert not survivors, f"processes outlived the teardown (killed now): {survivors}"
        assert not marked_processes(marker)


def _job_status(env: dict, dashboard: str, job_id: str) -> str:
    """The job's status as `ray job status` prints it (the pinned Ray's wording, see
    ray/dashboard/modules/job/cli.py:_log_job_status)."""
    proc = ray_cli(env, "job", "status", "--address", dashboard, job_id, timeout=60)
    out = proc.stdout + proc.stderr
    for state, text in (
        ("SUCCEEDED", f"Job '{job_id}' succeeded"),
        ("FAILED", f"Job '{job_id}' failed"),
        ("STOPPED", f"Job '{job_id}' was stopped"),
    ):
        if text in out:
            return state
    match = re.search(rf"Status for job '{re.escape(job_id)}': (\w+)", out)
    return match.group(1) if match else "UNKNOWN: " + out[-500:]


def test_search_submitted_to_two_node_cluster(cluster, tiny_model_dir, monkeypatch):
    env, tmp = cluster["env"], cluster["tmp"]
    space = write_space(tmp, samples=SAMPLES, epochs=EPOCHS)
    storage = tmp / "shared-storage"  # both nodes are this machine: a plain directory is shared
    runtime_env = {
        "env_vars": {
            "MLFLOW_TRACKING_USERNAME": USER,
            "MLFLOW_TRACKING_PASSWORD": PASSWORD,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        },
        "excludes": UPLOAD_EXCLUDES,
    }
    job_id = f"sps-cluster-{secrets.token_hex(4)}"
    entrypoint = [
        "python",
        "-m",
        "search.run",
        "--space",
        str(space),
        "--model",
        str(tiny_model_dir),
        "--name",
        SEARCH_NAME,
        "--storage",
        str(storage),
        "--mlflow-uri",
        cluster["mlflow"],
    ]

    t0 = time.monotonic()
    submit = ray_cli(
        env,
        "job",
        "submit",
        "--address",
        cluster["dashboard"],
        "--submission-id",
        job_id,
        "--working-dir",
        str(REPO),
        "--runtime-env-json",
        json.dumps(runtime_env),
        "--no-wait",
        "--",
        *entrypoint,
        timeout=180,
        cwd=tmp,
    )
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    state = _job_status(env, cluster["dashboard"], job_id)
    deadline = t0 + JOB_TIMEOUT_S
    while state in ("PENDING", "RUNNING") and time.monotonic() < deadline:
        time.sleep(2)
        state = _job_status(env, cluster["dashboard"], job_id)
    elapsed = time.monotonic() - t0
    logs = ray_cli(env, "job", "logs", "--address", cluster["dashboard"], job_id, timeout=60).stdout
    if state in ("PENDING", "RUNNING"):
        ray_cli(env, "job", "stop", "--address", cluster["dashboard"], job_id, timeout=60)
    print(
        f"\n[cluster] ray job submit -> {state} in {elapsed:.1f} s "
        f"({SAMPLES} trials x {EPOCHS} epochs, 2 nodes x 1 CPU)"
    )
    print("[cluster] job log tail:\n" + "\n".join(logs.splitlines()[-14:]))
    assert state == "SUCCEEDED", f"job {job_id}: {state}\n{logs[-5000:]}"
    assert "search finished" in logs

    # What --working-dir uploaded (unpacked on the head): the project's sources only.
    unpacked = [
        p for p in cluster["ray_tmp"].glob("head/session_latest/runtime_resources/working_dir_files/*") if p.is_dir()
    ]
    assert len(unpacked) == 1, unpacked
    files = [p for p in unpacked[0].rglob("*") if p.is_file()]
    size_mib = sum(p.stat().st_size for p in files) / 2**20
    print(f"[cluster] working dir uploaded: {len(files)} files, {size_mib:.1f} MiB")
    assert (unpacked[0] / "search" / "run.py").is_file()
    assert not [p for p in files if {".venv", ".git", "runs", "__pycache__"} & set(p.relative_to(unpacked[0]).parts)]
    assert size_mib < 20

    # MLflow over HTTP, with the credentials; anonymous clients are refused.
    import mlflow
    from mlflow.exceptions import MlflowException

    url = cluster["mlflow"]
    search_api = url + "/api/2.0/mlflow/experiments/search?max_results=1"
    assert _get(search_api) == 401
    assert _get(search_api, auth=(USER, "not-the-password")) == 401
    assert _get(search_api, auth=(USER, PASSWORD)) == 200
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with pytest.raises(MlflowException):
        mlflow.MlflowClient(tracking_uri=url).search_experiments()
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    client = mlflow.MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.run_name == SEARCH_NAME
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1 == SAMPLES
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["state"] for r in children} <= {"COMPLETED", "PRUNED"}
    assert len({r.data.tags["ray_trial_id"] for r in children}) == SAMPLES

    # The trials ran on both nodes: their node ids are exactly the cluster's two (not IPs: both
    # nodes have the same one).
    used = {r.data.tags["node_id"] for r in children}
    print(
        f"[cluster] trials per node: "
        f"{ {n[:8]: sum(r.data.tags['node_id'] == n for r in children) for n in sorted(used)} }"
    )
    assert used == cluster["nodes"]
