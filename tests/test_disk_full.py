"""The storage disk fills up mid-search: the driver ends with one clear line and exit 1, the
search is recorded as failed (MLflow parent FAILED, no run left RUNNING), and the console is not
a traceback storm. Before: 130-330 lines of tracebacks and the ledger's own ENOSPC.

The storage is a 1.1 GiB tmpfs in a mount namespace of the search's own (it passes the 1 GiB
free-space check), filled to the last byte from inside that namespace after the first trial
result. MLflow lives outside it, so what the driver recorded can be read afterwards.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from fault_helpers import SearchProcess, mlflow_summary, wait_until, write_fault_space
from search_helpers import search_command, search_env

pytestmark = pytest.mark.integration

MOUNT = 'mount -t tmpfs -o size=1100m tmpfs "$0" && exec "$@"'


class MountedSearch(SearchProcess):
    """A SearchProcess whose storage is a tmpfs mounted only in its own mount namespace."""

    def __init__(self, tmp_path, space, model, name, mnt, uri):
        self.name, self.log = name, tmp_path / f"{name}.log"
        cmd = [
            "unshare",
            "-m",
            "sh",
            "-c",
            MOUNT,
            str(mnt),
            *search_command(space, model, name, "--mlflow-uri", uri, storage=str(mnt / "runs")),
        ]
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=tmp_path, env=search_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def fill(self, mnt) -> str:
        """Write zeros into the search's tmpfs until the kernel says ENOSPC."""
        proc = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "sh", "-c", f'cat /dev/zero > "{mnt}/filler"'],
            capture_output=True,
            text=True,
            timeout=120,
        )
        return proc.stderr


def test_a_full_disk_ends_the_search_with_one_line(tiny_model_dir, tmp_path):
    mnt, store = tmp_path / "mnt", tmp_path / "store"
    mnt.mkdir()
    store.mkdir()
    probe = subprocess.run(["unshare", "-m", "sh", "-c", MOUNT, str(mnt), "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no private tmpfs mounts here ({probe.stderr.strip()[:80]})")
    space = write_fault_space(tmp_path, samples=4, epochs=4, tokens=(4, 8))
    uri = f"sqlite:///{store / 'mlflow.db'}"
    with MountedSearch(tmp_path, space, tiny_model_dir, "full", mnt, uri) as search:
        wait_until(lambda: re.search(r"trial \w+ epoch 1/", search.output()), 300, "first result", search)
        filled = search.fill(mnt)
        rc = search.wait(300)
        output = search.output()
    print(
        f"\n[disk full] filler: {filled.strip()!r}; exit {rc}; {len(output.splitlines())} console lines, "
        f"{output.count('Traceback')} tracebacks"
    )
    assert "No space left on device" in filled
    assert rc == 1, output[-3000:]
    assert re.search(
        r"^error: disk full \(.*\); free some space, then: python -m search.run .* --resume --name full$", output, re.M
    ), output[-3000:]
    assert output.count("Traceback") == 0, output[-3000:]
    summary = mlflow_summary(store / "mlflow.db")
    (parent,) = summary["parents"]
    assert (parent["status"], parent["tags"]["search_state"]) == ("FAILED", "failed")
    assert "RUNNING" not in {r["status"] for r in summary["children"]}
