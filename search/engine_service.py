"""One engine per device under Ray Tune: the frozen model loaded once, serving every trial there.

    engines = start_engines(spec)                     # the driver, before the Tuner
    engine = RemoteEngine(pick(engines, node_id, key))  # a trial: `trainable.engine`'s methods
    stop_engines(engines)                             # the driver, after the trials

Trials hold only their soft prompt, optimizer and data; the model lives in an `EngineActor`: one
per GPU when the space asks for GPUs (`resources.gpu: 1`; as many as `budget.max_concurrent`
trials need at `engine_max_batch` per engine), else one per node, on that node. The
actor gathers what trials ask within a short window (the pattern of Ray Serve's `@serve.batch`):
requests that arrive within `engine_wait_ms` of the first, at most `engine_max_batch` of them,
are served by one fused call (`LocalEngine.train_step` / `losses` / `generate_together`: each
request gets exactly what it would get alone). One call computes at a time; requests that
arrive meanwhile wait for the next.

The engine holds no trial's state, so its death loses nothing: Ray restarts the actor (the model
loads again), and a trial whose call failed with it sends the call again (`RemoteEngine`), for
up to `RETRY_S`; a trial that cannot reach an engine that long fails as with a lost worker
(Tune retries it from its checkpoint).
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import ray
import torch
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from trainable.engine import LossRequest, StepResult

RETRY_S = 600.0  # how long a trial keeps calling an engine that is down (a reload takes seconds to minutes)
# Fault injection for the fault tests: a path; when the file exists, the engine deletes it and its
# process exits at its next training step (once: the restarted engine finds no file). Unset in use.
DEATH_ENV = "SOFTPROMPT_INJECT_ENGINE_DEATH"


def _to(value, device):
    """A soft input, a request or a result with its tensors on `device` (detached: what crosses
    a process boundary carries no graph)."""
    from trainable.inputs import Prefix

    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value.detach().to(device)
    if isinstance(value, Prefix):
        return Prefix(tuple(_to(k, device) for k in value.keys), tuple(_to(v, device) for v in value.values))
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    if isinstance(value, LossRequest):
        return LossRequest(_to(value.soft, device), value.examples)
    if isinstance(value, StepResult):
        return replace(value, grad=_to(value.grad, device))
    return replace(value, soft=_to(value.soft, device))  # a GenerateRequest


class _Window:
    """Requests of one kind, gathered for `wait_s` after the first (or until `max_batch` wait),
    then served together by `serve(list) -> list` on the engine's one compute thread."""

    def __init__(self, serve, max_batch: int, wait_s: float, pool: ThreadPoolExecutor):
        self.serve, self.max_batch, self.wait_s, self.pool = serve, max_batch, wait_s, pool
        self.pending: list[tuple[object, asyncio.Future]] = []
        self.full = asyncio.Event()
        self.draining: asyncio.Task | None = None

    async def submit(self, item):
        future = asyncio.get_running_loop().create_future()
        self.pending.append((item, future))
        if len(self.pending) >= self.max_batch:
            self.full.set()
        if self.draining is None or self.draining.done():
            self.draining = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self.pending:
            if len(self.pending) < self.max_batch:
                try:
                    await asyncio.wait_for(self.full.wait(), self.wait_s)
                except asyncio.TimeoutError:
                    pass
            batch, self.pending = self.pending[: self.max_batch], self.pending[self.max_batch :]
            self.full.clear()
            if len(self.pending) >= self.max_batch:
                self.full.set()
            try:
                results = await loop.run_in_executor(self.pool, self.serve, [item for item, _ in batch])
            except Exception as exc:  # noqa: BLE001 - every caller of the batch gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)


@ray.remote(max_restarts=-1, max_task_retries=0)
class EngineActor:
    """The frozen model of one device (`trainable.engine.LocalEngine`) behind batching windows."""

    def __init__(self, model_ref: str, config, max_batch: int, wait_s: float, threads: int):
        from trainable.dtype_probe import config_dtype
        from trainable.engine import LocalEngine
        from trainable.model.loading import cached_model

        torch.set_num_threads(max(1, threads))
        dtype, reason = config_dtype(config, model_ref)
        self.engine = LocalEngine(cached_model(model_ref, dtype=dtype), dtype_reason=reason)
        self.device = self.engine.facts.device
        self.pool = ThreadPoolExecutor(max_workers=1)  # one fused call computes at a time
        self.windows = {
            "train": _Window(self._train, max_batch, wait_s, self.pool),
            "losses": _Window(self._losses, max_batch, wait_s, self.pool),
            "generate": _Window(self._generate, max_batch, wait_s, self.pool),
        }
        self.served = {"train_calls": 0, "train_requests": 0, "generate_calls": 0, "generate_requests": 0}

    async def describe(self) -> dict:
        """What a client needs: the model's facts (its device: the client's CPU) and the dtype's reason."""
        return {
            "facts": replace(self.engine.facts, device=torch.device("cpu")),
            "dtype_reason": self.engine.dtype_reason,
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
        }

    async def stats(self) -> dict:
        """How many fused calls served how many requests, and the engine's peak memory (GPU
        memory allocated on a GPU, else this process's resident peak)."""
        from trainable.trial import peak_memory_gib

        return {**self.served, "peak_memory_gib": peak_memory_gib(self.device)}

    async def embed(self, ids: list[int]) -> torch.Tensor:
        return self.engine.embed(ids).cpu()

    async def prefix_from_tokens(self, ids: list[int]) -> torch.Tensor:
        return self.engine.prefix_from_tokens(ids).cpu()

    async def train_step(self, requests: list[LossRequest]) -> list[StepResult]:
        return await self.windows["train"].submit(requests)

    async def losses(self, requests: list[LossRequest]) -> list[tuple[float, int]]:
        return await self.windows["losses"].submit(requests)

    async def generate(self, request):
        return await self.windows["generate"].submit(request)

    def _train(self, calls: list[list[LossRequest]]) -> list[list[StepResult]]:
        _maybe_die()
        flat = [_to(r, self.device) for call in calls for r in call]
        results = [_to(r, "cpu") for r in self.engine.train_step(flat)]
        self.served["train_calls"] += 1
        self.served["train_requests"] += len(calls)
        return _split(results, calls)

    def _losses(self, calls: list[list[LossRequest]]) -> list[list[tuple[float, int]]]:
        flat = [_to(r, self.device) for call in calls for r in call]
        return _split(self.engine.losses(flat), calls)

    def _generate(self, requests: list) -> list:
        self.served["generate_calls"] += 1
        self.served["generate_requests"] += len(requests)
        return self.engine.generate_together([_to(r, self.device) for r in requests])


def _split(flat: list, calls: list[list]) -> list[list]:
    out, start = [], 0
    for call in calls:
        out.append(flat[start : start + len(call)])
        start += len(call)
    return out


def _maybe_die() -> None:
    marker = os.environ.get(DEATH_ENV)
    if marker and Path(marker).exists():
        Path(marker).unlink()
        os._exit(1)


class RemoteEngine:
    """A trial's view of an `EngineActor`: `trainable.engine.LocalEngine`'s methods, each a call
    that is sent again while the engine restarts (up to `retry_s`)."""

    def __init__(self, handle, retry_s: float = RETRY_S):
        self.handle, self.retry_s = handle, retry_s
        described = self._call("describe")
        self.facts, self.dtype_reason = described["facts"], described["dtype_reason"]

    def _call(self, method: str, *args):
        deadline = time.monotonic() + self.retry_s
        while True:
            try:
                return ray.get(getattr(self.handle, method).remote(*args))
            except (ActorDiedError, ActorUnavailableError, RayActorError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def embed(self, ids: list[int]) -> torch.Tensor:
        return self._call("embed", ids)

    def prefix_from_tokens(self, ids: list[int]) -> torch.Tensor:
        return self._call("prefix_from_tokens", ids)

    def train_step(self, requests) -> list[StepResult]:
        return self._call("train_step", [_to(r, "cpu") for r in requests])

    def losses(self, requests) -> list[tuple[float, int]]:
        return self._call("losses", [_to(r, "cpu") for r in requests])

    def generate(self, request, progress=None):
        """The request's completions. With `progress` (a bar's update) it is sent in parts of
        four batches' prompts, so the bar moves; each prompt's tokens are the same either way."""
        from trainable.decoding.generate import Generation, GenerationStats

        if progress is None:
            return self._call("generate", _to(request, "cpu"))
        step = max(1, 4 * request.batch_size)
        texts, tokens, stats = [], [], GenerationStats()
        for start in range(0, len(request.prompts), step):
            part = request.part(start, start + step)
            out = self._call("generate", _to(part, "cpu"))
            texts += out.texts
            tokens += out.tokens
            stats.add(out.stats)
            progress(len(part.prompts))
        return Generation(texts, tokens, stats)


def start_engines(spec) -> list:
    """The search's engines, each loading the space's model in the space's (resolved) dtype:
    with `resources.gpu: 1` one per `engine_max_batch` concurrent trials, each taking a GPU (an
    autoscaling cluster adds GPU nodes for them as for any actor); with `gpu: 0` one per alive
    node, pinned to it, its torch threads the node's cores. Returns (handle, node id) pairs once
    every one has loaded (a model that cannot load fails here, before any trial)."""
    from search.targets import generation_config

    fixed = generation_config(spec)  # the settings every trial shares: dtype, the engine's window
    args = (spec.model, fixed, fixed.engine_max_batch, fixed.engine_wait_ms / 1000)
    options = {"max_concurrency": 1000}  # an async actor: calls wait in its windows, not in Ray's queue
    handles = []
    if spec.resources.gpu:
        count = math.ceil(spec.budget.max_concurrent / fixed.engine_max_batch)
        threads = max(1, int(spec.resources.cpu))
        handles = [EngineActor.options(num_cpus=0, num_gpus=1, **options).remote(*args, threads) for _ in range(count)]
    else:
        for node in ray.nodes():
            cpus = int(node.get("Resources", {}).get("CPU", 0))
            if node.get("Alive") and cpus > 0:
                pinned = {"scheduling_strategy": NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)}
                handles.append(EngineActor.options(num_cpus=0, **pinned, **options).remote(*args, cpus))
    try:
        described = ray.get([h.describe.remote() for h in handles])
    except ActorDiedError as exc:  # the constructor raised: the same on every try, so Ray does not retry it
        for handle in handles:
            ray.kill(handle, no_restart=True)
        raise EngineStartError(f"the engine could not load the model {spec.model}: {_cause(exc)}") from None
    return [(h, d["node_id"]) for h, d in zip(handles, described)]


class EngineStartError(RuntimeError):
    """No engine could load the model (a corrupt or mismatched checkpoint): no trial can run."""


def _cause(exc: Exception) -> str:
    """The exception the actor's constructor raised, from a Ray error's text: what follows the
    traceback's last frame (its code and caret lines dropped), on one line."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).splitlines()]
    frames = [i for i, line in enumerate(lines) if line.startswith('File "')]
    message = lines[frames[-1] + 2 :] if frames else lines
    words = " ".join(line for line in message if line and set(line) != {"^"})
    return words[:400] or type(exc).__name__


def pick(engines: list, node_id: str, key: str):
    """The engine for a trial on `node_id`: one on that node if there is one, spread by `key`
    over them (several GPUs), else spread over all."""
    here = [h for h, node in engines if node == node_id] or [h for h, _ in engines]
    return here[sum(key.encode()) % len(here)]


def stop_engines(engines: list) -> list[str]:
    """Stop every engine; returns a line per engine that still answered: what it served since it
    (re)started, in how many fused calls."""
    lines = []
    for index, (handle, _) in enumerate(engines):
        try:
            s = ray.get(handle.stats.remote(), timeout=10)
            lines.append(
                f"engine {index}: {s['train_requests']} training steps of trials in {s['train_calls']} fused "
                f"steps, {s['generate_requests']} decodes in {s['generate_calls']}; "
                f"peak memory {s['peak_memory_gib']:.2f} GiB"
            )
        except Exception:  # noqa: BLE001 - a dead or busy engine has nothing to say; it is stopped all the same
            pass
        ray.kill(handle, no_restart=True)
    return lines
