"""Progress bars (trainable.progress) go to stderr only when it is a terminal: generation and
scoring of a real evaluation (tiny model, real sandbox) draw bars on a pseudo-terminal and print
nothing into a pipe, a log file or a Ray worker's log; there a long step says where it is in a
plain line every so often instead.

    .venv/bin/pytest tests/test_progress.py -q
"""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import termios
import subprocess
import sys
import threading

from search_helpers import search_env

SCRIPT = """
import sys
from trainable.data.splits import load_problems
from trainable.decoding.generate_and_score import evaluate_problems
from trainable.model.loading import load_model
import torch

loaded = load_model(sys.argv[1], device="cpu", dtype=torch.float32)
problems = [p for _, p in sorted(load_problems().items())][:3]
result = evaluate_problems(loaded, problems, None, max_new_tokens=4, batch_size=2, sandbox_timeout_s=10.0)
print("evaluated", result.n)
"""


def _evaluate(zygote, tmp_path, model_dir, stderr: str | None = None) -> subprocess.CompletedProcess:
    """`python -c SCRIPT MODEL` with stderr captured (a file), or to `stderr` (a terminal's path);
    forked from the session's zygote, which has imported what SCRIPT imports (conftest)."""
    env = {k: v for k, v in search_env().items() if not k.startswith("TQDM_")}
    preload = ("trainable.data.splits", "trainable.decoding.generate_and_score", "trainable.model.loading")
    return zygote.run_code(SCRIPT, str(model_dir), cwd=tmp_path, env=env, timeout=300, preload=preload, stderr=stderr)


def test_no_bar_when_stderr_is_not_a_terminal(tmp_path, tiny_model_dir, cli_zygote):
    proc = _evaluate(cli_zygote, tmp_path, tiny_model_dir)
    assert proc.returncode == 0 and proc.stdout.strip() == "evaluated 3", proc.stderr[-2000:]
    assert "generating" not in proc.stderr and "scoring" not in proc.stderr and "\r" not in proc.stderr, proc.stderr


def test_bars_on_a_terminal(tmp_path, tiny_model_dir, cli_zygote):
    """The control: the same run with stderr on a pseudo-terminal draws both bars."""
    leader, follower = pty.openpty()
    # A fresh pseudo-terminal is 0 columns wide, where tqdm draws nothing: give it a real size.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    shown: list[bytes] = []

    def read_all() -> None:  # while the child runs: a full terminal buffer would block it
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the other end is closed
                return
            if not chunk:
                return
            shown.append(chunk)

    reader = threading.Thread(target=read_all, daemon=True)
    reader.start()
    try:
        proc = _evaluate(cli_zygote, tmp_path, tiny_model_dir, stderr=os.ttyname(follower))
    finally:
        os.close(follower)
    reader.join(timeout=30)
    os.close(leader)
    text = b"".join(shown).decode(errors="replace")
    assert proc.returncode == 0, text[-2000:]
    assert "generating:" in text and "/3 [" in text and "scoring:" in text, text[-2000:]


LONG_STEP = """
import time
from trainable.progress import bar

with bar(6, "converting", "stage") as stages:
    stages.set_postfix_str("joining the parts")
    for _ in range(6):
        time.sleep(0.5)
        stages.update(1)
print("done")
"""


def _long_step(stderr, every_s: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in search_env().items() if not k.startswith("TQDM_")}
    env["SOFTPROMPT_PROGRESS_EVERY_S"] = every_s
    return subprocess.run(
        [sys.executable, "-c", LONG_STEP], env=env, stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=120
    )


def test_a_long_step_in_a_pipe_says_where_it_is_in_plain_lines():
    """3 s of work, a line every 1 s: about three lines plus the last, each with done/total and a
    rate, none a redraw; before, a pipe got nothing until the step ended."""
    proc = _long_step(subprocess.PIPE, "1")
    assert proc.returncode == 0 and proc.stdout == "done\n", proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    assert 2 <= len(lines) <= 6 and "\r" not in proc.stderr and "\x1b" not in proc.stderr, proc.stderr
    for line in lines:
        assert line.startswith("converting: ") and "/6 stages (" in line and "joining the parts" in line, line
        assert " stage/s, " in line or " s/stage, " in line, line
    assert lines[-1].startswith("converting: 6/6 stages"), lines


def test_a_step_shorter_than_the_interval_prints_nothing_into_a_pipe():
    proc = _long_step(subprocess.PIPE, "60")
    assert proc.returncode == 0 and proc.stdout == "done\n" and proc.stderr == "", proc.stderr[-2000:]
