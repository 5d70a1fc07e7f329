"""The dtype probe for real on the tiny model: both dtypes timed, the choice cached per machine and
model under tmp_path, read back without probing, re-probed when damaged or for another model, and
one process probing at a time."""

import fcntl
import json
import threading

from trainable.dtype_probe import cache_path, probe_key, probed_dtype
from trainable.model.loading import resolve_model_ref
from trainable.tiny import save_tiny


def _files(cache):
    return sorted((cache / "dtype-probe").glob("*.json"))


def test_the_probe_times_both_dtypes_caches_and_reprobes_only_when_it_must(tmp_path, tiny_model_dir, capsys):
    cache = tmp_path / "cache"
    name, reason = probed_dtype(str(tiny_model_dir), 2, 4, cache_dir=cache)
    (file,) = _files(cache)
    record = json.loads(file.read_text())
    assert record["dtype"] == name and record["reason"] == reason and reason.startswith("auto: measured fp32 ")
    assert set(record["timings"]) == {"float32", "bfloat16"}
    assert all(t["train_s"] > 0 and t["decode_s"] > 0 for t in record["timings"].values())
    assert record["key"]["batch_size"] == 2 and record["key"]["machine"]["threads"] >= 1
    printed = capsys.readouterr().out
    assert printed.count("dtype probe (") == 1 and "CPU flags:" in printed and reason in printed

    written = file.stat().st_mtime_ns
    assert probed_dtype(str(tiny_model_dir), 2, 4, cache_dir=cache) == (name, reason + " (cached)")
    assert "dtype probe (" not in capsys.readouterr().out and file.stat().st_mtime_ns == written

    file.write_text('{"key": {"format": 1}, "dtype": "bfl')  # cut short: probed again, no crash
    assert probed_dtype(str(tiny_model_dir), 2, 4, cache_dir=cache)[1].startswith("auto: measured")
    assert "dtype probe (" in capsys.readouterr().out and json.loads(file.read_text())["key"] == record["key"]

    other = save_tiny(tmp_path / "other-model", seed=1)  # another identity: its own probe and file
    probed_dtype(str(other), 2, 4, cache_dir=cache)
    assert "dtype probe (" in capsys.readouterr().out and len(_files(cache)) == 2


def test_a_second_process_waits_for_the_probe_then_reads_its_result(tmp_path, tiny_model_dir):
    cache = tmp_path / "cache"
    key = probe_key(resolve_model_ref(str(tiny_model_dir)), 2, 4)
    path = cache_path(key, cache)
    path.parent.mkdir(parents=True)
    done = {}
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a probing process holds it
        reader = threading.Thread(
            target=lambda: done.update(result=probed_dtype(str(tiny_model_dir), 2, 4, cache_dir=cache))
        )
        reader.start()
        reader.join(timeout=1.5)
        assert reader.is_alive() and not done  # waiting for the lock, not probing beside it
        path.write_text(json.dumps({"key": key, "dtype": "bfloat16", "reason": "auto: the other process's"}))
    reader.join(timeout=60)
    assert done["result"] == ("bfloat16", "auto: the other process's (cached)")
