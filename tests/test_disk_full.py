"""The storage disk fills up, or turns read-only, mid-search: the driver ends with one clear
line and exit 1, the search is recorded as failed (MLflow parent FAILED, no run left RUNNING),
and the console is not a traceback storm. Before: 130-330 lines of tracebacks and the ledger's own
ENOSPC; on a read-only disk 724-959 lines, 20-35 tracebacks, each trial retried on it.

The storage is a 1.1 GiB tmpfs in a mount namespace of the search's own (it passes the 1 GiB
free-space check), filled to the last byte from inside that namespace after the first trial
result. The read-only storage is an ext4 image on a loop device mounted with
`errors=remount-ro`, which the kernel turns read-only on an error (triggered through sysfs) even
while files are open for writing, as a failing disk does. MLflow lives outside both, so what the
driver recorded can be read afterwards.
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

    def __init__(self, tmp_path, space, model, name, mnt, uri, mount: str = MOUNT, *mount_args: str):
        self.name, self.log = name, tmp_path / f"{name}.log"
        cmd = [
            "unshare",
            "-m",
            "sh",
            "-c",
            mount,
            str(mnt),
            *mount_args,
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


# $1: the ext4 image; "$0": the mount point.
MOUNT_EXT4 = 'mount -o loop,errors=remount-ro "$1" "$0" && shift && exec "$@"'


def _ext4_image(tmp_path):
    image = tmp_path / "disk.img"
    with open(image, "wb") as out:
        out.truncate(1200 << 20)  # sparse; passes the 1 GiB free-space check once formatted
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True)
    return image if made.returncode == 0 else None


def test_a_disk_turning_read_only_ends_the_search_with_one_line(tiny_model_dir, tmp_path):
    import time

    mnt, store = tmp_path / "mnt", tmp_path / "store"
    mnt.mkdir()
    store.mkdir()
    image = _ext4_image(tmp_path)
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", MOUNT_EXT4, str(mnt), str(image), "true"], capture_output=True, text=True
    )
    if image is None or probe.returncode != 0:
        pytest.skip(f"no private ext4 loop mounts here ({probe.stderr.strip()[:80]})")
    space = write_fault_space(tmp_path, samples=4, epochs=4, tokens=(4, 8))
    uri = f"sqlite:///{store / 'mlflow.db'}"
    with MountedSearch(tmp_path, space, tiny_model_dir, "ro", mnt, uri, MOUNT_EXT4, str(image)) as search:
        wait_until(lambda: re.search(r"trial \w+ epoch 1/", search.output()), 300, "first result", search)
        trigger = f'echo 1 > "/sys/fs/ext4/$(basename "$(findmnt -n -o SOURCE "{mnt}")")/trigger_fs_error"'
        turned = subprocess.run(["nsenter", "-t", str(search.pid), "-m", "sh", "-c", trigger], capture_output=True)
        started = time.monotonic()
        rc = search.wait(300)
        took = time.monotonic() - started
        output = search.output()
    print(
        f"\n[read-only] exit {rc} {took:.1f} s after the fault; {len(output.splitlines())} console lines, "
        f"{output.count('Traceback')} tracebacks, {output.count('crashed')} retries"
    )
    assert turned.returncode == 0, turned.stderr
    assert rc == 1, output[-3000:]
    errors = re.findall(r"^error: .*$", output, re.M)
    resume = r"python -m search.run .* --resume --name ro$"
    assert len(errors) == 1, output[-3000:]
    assert re.match(r"error: read-only storage \(.*Errno 30.*'.*\); make it writable, then: " + resume, errors[0])
    assert output.count("Traceback") == 0 and "crashed" not in output, output[-3000:]
    summary = mlflow_summary(store / "mlflow.db")
    (parent,) = summary["parents"]
    assert (parent["status"], parent["tags"]["search_state"]) == ("FAILED", "failed")
    assert "RUNNING" not in {r["status"] for r in summary["children"]}
