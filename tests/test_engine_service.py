"""The engine under Ray: one actor holds the model, trials are clients whose requests it fuses.

The batching window (fast, no Ray): requests that arrive together are served by one call, at
most `max_batch` of them, a lone one after the wait, and an error reaches every caller of its
call. Under a real local Ray (integration): three trials of mixed methods, trained at once
through one engine actor, end exactly where each ends alone on an in-process engine, in fewer
fused calls than requests; and an engine that dies mid-training is restarted while its clients
send their calls again, and they still end where each ends alone.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from search.engine_service import _Window
from trainable.config import TrainConfig
from trainable.data.splits import DataSplit, problems_for
from trainable.decoding.generate import GenerateRequest


def _serve_in_window(arrivals: list[float], max_batch: int, wait_s: float, fail: bool = False):
    """Submit one request per arrival delay; returns each caller's result and the batches served."""
    batches = []

    def serve(items):
        batches.append(list(items))
        if fail:
            raise RuntimeError("the model ran out of memory")
        return [item * 10 for item in items]

    async def main():
        window = _Window(serve, max_batch, wait_s, ThreadPoolExecutor(max_workers=1))

        async def caller(index, delay):
            await asyncio.sleep(delay)
            try:
                return await window.submit(index)
            except RuntimeError as exc:
                return str(exc)

        return await asyncio.gather(*(caller(i, d) for i, d in enumerate(arrivals)))

    return asyncio.run(main()), batches


def test_requests_arriving_together_are_served_in_one_call():
    results, batches = _serve_in_window([0.0, 0.0, 0.01, 0.02], max_batch=8, wait_s=0.2)
    assert results == [0, 10, 20, 30]
    assert batches == [[0, 1, 2, 3]]


def test_a_full_window_is_served_without_waiting():
    started = time.perf_counter()
    results, batches = _serve_in_window([0.0] * 4, max_batch=2, wait_s=30.0)
    assert results == [0, 10, 20, 30]
    assert batches == [[0, 1], [2, 3]]
    assert time.perf_counter() - started < 10.0  # neither full window waited its 30 s


def test_a_lone_request_is_served_after_the_wait():
    results, batches = _serve_in_window([0.0, 0.5], max_batch=8, wait_s=0.05)
    assert results == [0, 10] and batches == [[0], [1]]


def test_an_error_reaches_every_caller_of_its_call():
    results, batches = _serve_in_window([0.0, 0.0, 0.0], max_batch=8, wait_s=0.1, fail=True)
    assert results == ["the model ran out of memory"] * 3 and len(batches) == 1


CONFIGS = [
    TrainConfig(num_virtual_tokens=4, seed=1, learning_rate=0.1, batch_size=2),
    TrainConfig(method="prefix_tuning", num_virtual_tokens=3, seed=2, learning_rate=0.01, batch_size=3),
    TrainConfig(method="p_tuning", num_virtual_tokens=5, encoder_hidden_size=8, seed=3, learning_rate=0.01),
]


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


def _train(engine, examples, epochs=2):
    """Each config's trainer made one after the other (torch's seeded RNG is global), then trained
    at once in threads, as trials in their own processes are: their requests meet in the engine."""
    from trainable.softprompt import SoftPrompt
    from trainable.train import Trainer

    made = []
    for config in CONFIGS:
        prompt = SoftPrompt.create(engine, config)
        made.append((prompt, Trainer(engine, prompt, config, 12)))
    out = [None] * len(CONFIGS)

    def run(index):
        prompt, trainer = made[index]
        for epoch in range(1, epochs + 1):
            trainer.train_epoch(examples[index * 4 : (index + 1) * 4], epoch)
        out[index] = prompt.output().detach()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(CONFIGS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return out


def _engine_actor(model_dir, env: dict | None = None):
    from search.engine_service import EngineActor

    options = {"max_concurrency": 1000}
    if env:
        options["runtime_env"] = {"env_vars": env}
    return EngineActor.options(**options).remote(str(model_dir), TrainConfig(dtype="float32"), 16, 0.05, 1)


@pytest.mark.integration  # a real local Ray and an engine actor (~30 s on 2 cores)
def test_trials_through_one_engine_actor_end_where_each_ends_alone(local_ray, tiny_model_dir, tiny_loaded):
    from search.engine_service import RemoteEngine
    from trainable.engine import LocalEngine
    from trainable.train import build_examples

    actor = _engine_actor(tiny_model_dir)
    remote = RemoteEngine(actor)
    examples = build_examples(remote.facts, problems_for("train", DataSplit(12, 4, 4)), 96)
    alone = _train(LocalEngine(tiny_loaded), examples)
    served = _train(remote, examples)
    for a, b in zip(alone, served):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    stats = local_ray.get(actor.stats.remote())
    batches = sum(-(-4 // config.batch_size) for config in CONFIGS)  # each trial's 4 examples
    assert stats["train_requests"] == 2 * batches  # two epochs
    assert stats["train_calls"] < stats["train_requests"], stats  # requests met in fused calls

    problems = problems_for("val", DataSplit(12, 4, 4))
    soft = torch.randn(3, tiny_loaded.model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    request = GenerateRequest([p["prompt"] for p in problems], soft, max_new_tokens=8, batch_size=2)
    assert remote.generate(request).tokens == LocalEngine(tiny_loaded).generate(request).tokens
    local_ray.kill(actor, no_restart=True)


@pytest.mark.integration  # a real local Ray; the engine's process exits mid-training (~40 s)
def test_an_engine_that_dies_is_restarted_and_its_trials_lose_nothing(local_ray, tiny_model_dir, tiny_loaded, tmp_path):
    from search.engine_service import DEATH_ENV, RemoteEngine
    from trainable.engine import LocalEngine
    from trainable.train import build_examples

    marker = tmp_path / "die-once"
    actor = _engine_actor(tiny_model_dir, {DEATH_ENV: str(marker)})
    remote = RemoteEngine(actor)
    pid = local_ray.get(actor.describe.remote())["pid"]
    examples = build_examples(remote.facts, problems_for("train", DataSplit(12, 4, 4)), 96)
    alone = _train(LocalEngine(tiny_loaded), examples)
    marker.touch()  # the engine exits at its next training step
    served = _train(remote, examples)
    assert not marker.exists(), "the engine never reached the fault"
    assert local_ray.get(actor.describe.remote())["pid"] != pid, "the engine was not restarted"
    for a, b in zip(alone, served):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    local_ray.kill(actor, no_restart=True)


def test_a_request_cut_in_parts_merges_back_to_itself():
    """RemoteEngine sends a long decode in parts (`part`); each keeps its prompts' soft prompts,
    stops and seeds, so the parts merged are the request again."""
    from trainable.decoding.generate import Sampling

    softs = [torch.full((2, 3), float(i)) for i in range(5)]
    request = GenerateRequest(
        [f"p{i}" for i in range(5)], softs, 8, 2, [(f"s{i}",) for i in range(5)], Sampling(0.8, 0.95, tuple(range(5)))
    )
    parts = [request.part(start, start + 2) for start in range(0, 5, 2)]
    assert [p.prompts for p in parts] == [["p0", "p1"], ["p2", "p3"], ["p4"]]
    merged = GenerateRequest.merge(parts)
    assert merged.prompts == request.prompts and merged.stops == request.stops
    assert merged.sampling == request.sampling and all(a is b for a, b in zip(merged.soft, softs))
    shared = GenerateRequest(["a", "b", "c"], softs[0], 8, 2)
    assert shared.part(1, 3).soft is softs[0] and shared.part(1, 3).stops is None
