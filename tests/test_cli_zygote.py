"""The CLI tests' zygote (tests/cli_zygote.py) gives what `python -m MODULE ARGS` gives: the exit
status, stdout and stderr of each command, in its own working dir and environment, and a failure
as a failure; compared here with a fresh interpreter on a small command."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from search_helpers import CliZygote

PROBE = """\
import os
import sys

print("argv", sys.argv[1:], "cwd", os.getcwd(), "env", os.environ.get("PROBE"), sys.path[0] == os.getcwd())
print("to stderr", file=sys.stderr)
if __name__ == "__main__":
    how = sys.argv[1]
    if how == "raise":
        raise ValueError("boom")
    if how == "message":
        sys.exit("a message")
    if how == "kill":
        os.kill(os.getpid(), 9)
    if how == "sleep":
        import time

        time.sleep(60)
    sys.exit(int(how))
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """A module `probe_cli` on PYTHONPATH, a zygote for it, and the environment both run in."""
    root = tmp_path_factory.mktemp("zygote")
    (root / "lib").mkdir()
    (root / "lib" / "probe_cli.py").write_text(PROBE)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(root / "lib")}
    zygote = CliZygote(root, env=env)
    yield zygote, env
    zygote.close()


@pytest.mark.parametrize("how", ["0", "3", "raise", "message", "kill"])
def test_the_zygote_gives_what_python_m_gives(probe, tmp_path, how):
    zygote, env = probe
    env = {**env, "PROBE": how}
    fresh = subprocess.run(
        [sys.executable, "-m", "probe_cli", how], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    forked = zygote.run("probe_cli", how, cwd=tmp_path, env=env, timeout=60)
    assert (forked.returncode, forked.stdout) == (fresh.returncode, fresh.stdout)
    killed = how == "kill"  # before its buffered stdout was written, in both
    assert fresh.stdout == ("" if killed else f"argv ['{how}'] cwd {tmp_path} env {how} True\n")
    # The same lines, but for the frames of the traceback (runpy's entry point differs).
    frames = ("  File ", "    ")
    assert [x for x in forked.stderr.splitlines() if not x.startswith(frames)] == [
        x for x in fresh.stderr.splitlines() if not x.startswith(frames)
    ]
    assert fresh.stderr.startswith("to stderr\n") and ("Traceback" in fresh.stderr) == (how == "raise")


def test_a_command_past_its_timeout_is_killed(probe, tmp_path):
    zygote, env = probe
    with pytest.raises(subprocess.TimeoutExpired):
        zygote.run("probe_cli", "sleep", cwd=tmp_path, env=env, timeout=1)
    assert zygote.run("probe_cli", "0", cwd=tmp_path, env=env, timeout=60).returncode == 0  # still serves
