"""Run `python -m MODULE ARGS` many times without paying its imports each time.

`python -m search.run --dry-run` spends ~7 s of CPU importing torch, transformers and Ray before it
reads its first argument; the CLI tests run it dozens of times. This script (the zygote) imports a
module once, then forks one child per command: the child sets the command's working dir,
environment, argv and stdio, and runs the module as `__main__` (`runpy`, as `python -m` does), so
each command still is its own process, with its own exit status, stdout and stderr, and nothing it
changes reaches the next one. The zygote itself never runs a command's code, only the imports.

What a child does not repeat is the interpreter's start and those imports (so what they read from
the environment is the zygote's, not the command's), nor the interpreter's teardown of them at exit
(atexit handlers and stdio flushes still run): tests that are about the command's start (a warning
printed on import, what gets imported) run the real `python -m`.

Protocol, one JSON object per line: the caller writes {"module" or "code", "args", "cwd", "env",
"stdout", "stderr", "preload"} ("code": as `python -c CODE ARGS`; stdout and stderr: files, or a
terminal, that receive the command's output; preload: modules the zygote imports for such code,
once, before the fork); the zygote answers {"pid": N} once the child runs and then
{"returncode": R} (negative: killed by that signal, as `subprocess`).
The zygote exits when its stdin closes; what its imports print goes to its stderr.
`CliZygote` in search_helpers.py is the caller's side; tests/test_cli_zygote.py compares the two.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import runpy
import sys
import threading


def _child(request: dict) -> int:
    """In the forked child: become the command, then run it; its exit status."""
    os.close(REPLIES)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path, flags in (
        (0, os.devnull, os.O_RDONLY),
        (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
        (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
    ):
        opened = os.open(path, flags, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    try:
        if "code" in request:  # as `python -c CODE ARGS`
            sys.argv, sys.path[0] = ["-c", *request["args"]], ""
            exec(compile(request["code"], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        else:  # as `python -m MODULE ARGS`, which puts the working dir first on the path
            sys.argv, sys.path[0] = [request["module"], *request["args"]], os.getcwd()
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    except SystemExit as stop:  # what the interpreter makes of sys.exit(code)
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return 1
    except BaseException:  # an uncaught exception: its traceback, exit 1
        sys.excepthook(*sys.exc_info())
        return 1
    return 0


def _exit(code: int) -> None:
    """The exit of a process that ends normally, less the interpreter's teardown of every module
    the zygote imported (seconds of CPU, that a fresh `python -m` pays once and no test watches):
    non-daemon threads are joined, atexit handlers run, stdio is flushed."""
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def _import_once(module: str, keep: bool = False) -> None:
    """Import what MODULE imports, here, before the fork; unless `keep`, MODULE itself is left
    out of sys.modules, as `python -m MODULE` finds it (runpy warns otherwise)."""
    if module not in _IMPORTED:
        _IMPORTED.add(module)
        try:
            importlib.import_module(module)
        except Exception:  # the child imports it again and fails as `python -m` would
            pass
    if keep:
        return
    sys.modules.pop(module, None)
    package, _, name = module.rpartition(".")
    if package in sys.modules and hasattr(sys.modules[package], name):
        delattr(sys.modules[package], name)


_IMPORTED: set[str] = set()


def _returncode(status: int) -> int:
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _reply(message: dict) -> None:
    os.write(REPLIES, (json.dumps(message) + "\n").encode())


# The answers leave by the stdout the zygote was started with; what an import prints goes to stderr.
REPLIES = os.dup(1)
os.dup2(2, 1)


def main() -> None:
    sys.path[0] = os.getcwd()
    pending = b""
    while True:
        while b"\n" not in pending:
            chunk = os.read(0, 1 << 16)
            if not chunk:
                return
            pending += chunk
        line, pending = pending.split(b"\n", 1)
        request = json.loads(line)
        for module in request.get("preload", []):
            _import_once(module, keep=True)
        if "module" in request:
            _import_once(request["module"])
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _exit(_child(request))
        _reply({"pid": pid})
        _reply({"returncode": _returncode(os.waitpid(pid, 0)[1])})


if __name__ == "__main__":
    main()
