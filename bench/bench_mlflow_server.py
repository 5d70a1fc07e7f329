"""Start time and memory of `python -m mlflow_server` on this machine.

    .venv/bin/python bench/bench_mlflow_server.py [--auth] [--repeat N]

Starts the server on a free loopback port with sqlite + artifacts in a temp dir, measures the
time until the "ready" line (i.e. GET /health answered OK), the memory of the whole process
tree (RSS summed, and USS, which does not double-count shared pages), and the time to stop on
SIGTERM. The first start creates the database (migrations); later starts reuse it.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_memory(pid: int) -> tuple[float, float | None, int]:
    """(RSS MiB summed, USS MiB summed or None, process count) of pid and descendants."""
    try:
        import psutil
    except ImportError:  # /proc fallback: RSS only
        pids, frontier = [pid], [pid]
        while frontier:
            p = frontier.pop()
            try:
                kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
            except OSError:
                kids = []
            pids += [int(k) for k in kids]
            frontier += [int(k) for k in kids]
        rss = 0
        for p in pids:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
        return rss / 1024, None, len(pids)
    root = psutil.Process(pid)
    procs = [root] + root.children(recursive=True)
    rss = sum(p.memory_info().rss for p in procs)
    uss = sum(p.memory_full_info().uss for p in procs)
    return rss / 2**20, uss / 2**20, len(procs)


def start_once(workdir: Path, auth: bool) -> dict:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable,
        "-m",
        "mlflow_server",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination",
        str(workdir / "artifacts"),
    ]
    if auth:
        cmd.append("--auth")
        env.setdefault("MLFLOW_TRACKING_PASSWORD", "bench-password-0123")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=workdir)
    line = proc.stdout.readline()
    ready_s = time.monotonic() - t0
    if "ready at" not in line:
        proc.wait()
        raise SystemExit(f"server did not start (exit {proc.returncode})")
    time.sleep(1.0)  # let lazy imports settle before sampling memory
    rss, uss, n = tree_memory(proc.pid)
    t1 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    return {
        "ready_s": ready_s,
        "rss_mib": rss,
        "uss_mib": uss,
        "procs": n,
        "stop_s": time.monotonic() - t1,
        "exit": code,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--auth", action="store_true")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [("fresh db" if i == 0 else "existing db", start_once(Path(tmp), args.auth)) for i in range(args.repeat)]
    print(
        f"mlflow_server start ({'basic-auth' if args.auth else 'no auth'}), "
        f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}"
    )
    print(f"{'start':<12} {'ready s':>8} {'RSS MiB':>8} {'USS MiB':>8} {'procs':>5} {'stop s':>7} {'exit':>4}")
    for name, r in rows:
        uss = f"{r['uss_mib']:.0f}" if r["uss_mib"] is not None else "n/a"
        print(
            f"{name:<12} {r['ready_s']:>8.2f} {r['rss_mib']:>8.0f} {uss:>8} {r['procs']:>5} "
            f"{r['stop_s']:>7.2f} {r['exit']:>4}"
        )


if __name__ == "__main__":
    main()
