"""A seeded, bounded fuzzer for services.toml (issue 10, "Done when").

Mutations of valid, real-shaped files (byte flips, truncations, type swaps, hostile values,
huge and deep structures, weird Unicode, headers inside multi-line strings) go through

1. ``config.load`` in-process (every one), ``config.parse`` for text no file can hold
   (lone surrogates);
2. the real ``supervise check`` CLI (a sample);
3. a live reload of one running supervisor (every invalid one, through the ``reload`` verb,
   plus a few real saves picked up by the file watcher).

Wanted: 0 tracebacks, 0 configs taking 2 s or more, every error located (``file:line:col``, or
at least the file), and after each bad reload the supervisor alive, its service's pid unchanged,
the error reported. ``SUPERVISE_FUZZ_SEED`` / ``SUPERVISE_FUZZ_COUNT`` change the run; the
counts are printed (``pytest -s``) for the record.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import subprocess
import sys
import time
import tomllib
import traceback
from pathlib import Path

import tomlkit
from harness import PY, DaemonRun, run

from supervisor.desired import config
from supervisor.desired.config import SERVICE_KEYS, ConfigError
from supervisor.control.client import Client, ControlError

SEED = int(os.environ.get("SUPERVISE_FUZZ_SEED", "20261130"))
COUNT = int(os.environ.get("SUPERVISE_FUZZ_COUNT", "1200"))
CLI_SAMPLE = 24
LIVE_SAVES = 6
HANG = 2.0  # seconds: a config taking this long counts as a hang

SLEEP = f'["{PY}", "-c", "import time; time.sleep(300)"]'


def corpus(root: Path) -> list[str]:
    """Valid, real-shaped files (every one passes check in ``root``)."""
    (root / "web" / "static").mkdir(parents=True, exist_ok=True)
    (root / "repo.git").mkdir(exist_ok=True)
    (root / "web.env").write_text("SECRET=s3cret\nURL=http://${HOST:-localhost}/\n")
    return [
        """# a web stack
[supervise]
state_dir = ".supervise"
poll = "30s"
keep_versions = 3
log = { max_size = "10MiB", backups = 5, timestamps = true }

[env]
PYTHONUNBUFFERED = "1"
HOST = "127.0.0.1"

[services.web]
source = "./web"
build = "python3 build.py"
command = ["python3", "app.py", "--port", "${PORT}"]
cwd = "static"
env = { PORT = 8000, DEBUG = false, RATIO = 0.5 }
env_file = "web.env"
replicas = 2
restart = "on-failure"
backoff = { initial = "500ms", max = "1m", reset = "5m" }
start_limit = { burst = 5, interval = "30s" }
stop_signal = "SIGINT"
stop_timeout = "5s"
ready = { http = "http://127.0.0.1:${PORT}/health", interval = "200ms", timeout = "1s", retries = 3 }
live = { tcp = "127.0.0.1:8000", start_period = "10s" }
update = "start-first"
watch = ["**/*.py", "templates/*.html"]

[services.worker]
source = { git = "repo.git", ref = "main", poll = "1m" }
build = "make"
command = "python3 worker.py --queue jobs"
depends_on = { web = { condition = "ready", restart = true } }
log = { max_size = 1048576, backups = 0 }

[services.cron]
command = "echo tick && sleep 60"
shell = true
replicas = 0
restart = "never"
depends_on = ["worker"]
""",
        f"""[services.api]
command = {SLEEP}
stop_timeout = "2s"
""",
        """[supervise]
runtime = "local"

[services.db]
command = ["postgres", "-D", "data"]
ready = { exec = "pg_isready -q", interval = "1s" }
stop_signal = 2

[services.app]
command = 'gunicorn app:wsgi --bind 127.0.0.1:80'
depends_on = { db = "ready" }
env = { GREETING = \"\"\"hello,
[services.fake]
world\"\"\" }
""",
    ]


# -- mutators --------------------------------------------------------------------------------

HOSTILE_VALUES = [
    10 ** 400, -10 ** 400, -1, 0, 2 ** 63, math.nan, math.inf, -math.inf, 1e308, 5e-324, True,
    "", " ", "\x00", "a\x00b", "x" * 300, "a/" * 2100, "\u202egnp.exe", "\x1b[31mred", "..", "../../etc",
    "/dev/zero", "~nobody/x", "-", "--upload-pack=touch /tmp/x", "9" * 400 + "s", "1e400", "inf", "nan",
    "-1s", "1" * 5000, "\u200b", "\ufeff", "\U0001f600", "\uffff", "é" * 200, "**/" * 50 + "*",
    "*?[" * 30, "[!", "[services.x]", "a\nb", "\\", "${" + "A" * 1000 + "}", "h:" + "9" * 5000,
    "http://h:" + "9" * 5000 + "/", [], [[]], [1, "a"], ["a\x00"], [""], {}, {"a": {"b": {"c": 1}}},
    {"git": "x"}, {"git": "\x00"}, {"path": "x" * 300},
]


def deep_list(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


def deep_table(depth: int) -> str:
    return "{a=" * depth + "1" + "}" * depth


def raw_hostile(rng: random.Random) -> str:
    """A TOML value literal that no TOML library would produce."""
    return rng.choice([
        "9" * rng.randint(20, 600), "-" + "9" * 400, "1e400", "-1e400", "inf", "nan", "+inf", "-nan",
        "0x" + "f" * 200, "0o777777777777777777777777", "1979-05-27", "07:32:00", "1979-05-27T07:32:00Z",
        deep_list(rng.randint(50, 99)), deep_list(rng.randint(100, 3000)), deep_table(rng.randint(50, 99)),
        deep_table(rng.randint(100, 2000)), '"\\u0000"', '"\\ud800"', '"\\U0010ffff"', '"\\U00110000"',
        '"' + "\\u202e" * 10 + '"', "[" + ", ".join(["1"] * rng.randint(500, 5000)) + "]",
        '"' + "x" * rng.randint(1000, 100_000) + '"', "'''\n[services.evil]\ncommand = 1\n'''",
        '"""\n[services.evil]\n"""', "{ " + ", ".join(f"k{i} = {i}" for i in range(rng.randint(10, 500))) + " }",
    ])


def leaves(data, path=()):
    if isinstance(data, dict):
        for key, value in data.items():
            yield path + (key,)
            yield from leaves(value, path + (key,))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield path + (index,)
            yield from leaves(value, path + (index,))


def set_at(data, path, value) -> None:
    for part in path[:-1]:
        data = data[part]
    data[path[-1]] = value


def mutate(rng: random.Random, base: str) -> bytes | str:
    """One mutation of ``base``: bytes for a file, or (rarely) str with lone surrogates."""
    # kinds 0-9, "huge" (7) rarely: one costs a fraction of a second to parse, the rest ms
    kind = rng.choices(range(10), weights=[12, 10, 12, 12, 12, 12, 12, 2, 12, 10])[0]
    if kind == 0:  # byte flips
        data = bytearray(base.encode())
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.choice(
                [0, 1, 0x1b, 0x7f, 0xff, 0xc3, 0x80, *b"\"'[]{}=,.#\n\\ ", rng.randrange(256)])
        return bytes(data)
    if kind == 1:  # truncation
        return base.encode()[: rng.randrange(len(base))]
    if kind in (2, 3, 4):  # type swap of one value (or key) through a TOML library
        data = tomllib.loads(base)
        for _ in range(rng.randint(1, 3)):
            path = rng.choice(list(leaves(data)))
            value = rng.choice(HOSTILE_VALUES)
            if isinstance(value, (list, dict)):
                value = eval(repr(value))  # a fresh copy
            set_at(data, path, value)
        try:
            return tomlkit.dumps(data).encode("utf-8", "surrogateescape")
        except (ValueError, TypeError, UnicodeError):  # a value TOML cannot write: write it raw
            return (base + f"\n# {path!r}\n").encode()
    if kind in (5, 6):  # a hostile literal under a real key, in a real table
        lines = base.splitlines()
        headers = [i for i, line in enumerate(lines) if line.startswith("[services.")]
        at = rng.choice(headers) + 1 if headers else len(lines)
        key = rng.choice([*SERVICE_KEYS, "stop_timeout", "max_size", "x" * 300, '"\\u0000"', '"a.b"'])
        if key == "max_size":
            lines.insert(at, f"log = {{ max_size = {raw_hostile(rng)} }}")
        else:
            lines.insert(at, f"{key} = {raw_hostile(rng)}")
        return "\n".join(lines).encode()
    if kind == 7:  # huge: many services, many mistakes
        count = rng.randint(100, 400)
        missing = rng.random() < 0.5
        return "".join(f'[services.s{i}]\ncommand = "x"\n' + (f'depends_on = ["m{i}"]\n' if missing else f"comand{i % 7} = 1\n")
                       for i in range(count)).encode()
    if kind == 8:  # weird Unicode anywhere, as text
        text = list(base)
        for _ in range(rng.randint(1, 6)):
            text.insert(rng.randrange(len(text)), rng.choice(
                ["\u202e", "\u2066", "\u200b", "\ufeff", "\u0301", "\U0001f600", "\uffff", "\x85", "\u2028", "\x00", "\x1b"]))
        if rng.random() < 0.3:  # a lone surrogate: no file holds it, parse() may still be given it
            text.insert(rng.randrange(len(text)), rng.choice(["\ud800", "\udc80", "\udfff"]))
            return "".join(text)
        return "".join(text).encode()
    # duplicated or reordered sections
    blocks = base.split("\n\n")
    rng.shuffle(blocks)
    if rng.random() < 0.5:
        blocks.append(rng.choice(blocks))
    return "\n\n".join(blocks).encode()


# -- the checks ------------------------------------------------------------------------------


class Tally:
    def __init__(self) -> None:
        self.configs = self.valid = self.invalid = self.located = self.file_only = 0
        self.tracebacks: list[str] = []
        self.hangs: list[float] = []
        self.unlocated: list[str] = []
        self.slowest = 0.0

    def check(self, item: bytes | str, path: Path) -> ConfigError | None:
        """One config through check in-process; returns its ConfigError, if any."""
        self.configs += 1
        started = time.monotonic()
        error = None
        try:
            if isinstance(item, str):
                config.parse(item, path)
            else:
                path.write_bytes(item)
                config.load(path)
            self.valid += 1
        except ConfigError as exc:
            error = exc
            self.invalid += 1
            for d in exc.diagnostics:
                text = str(d)
                if d.path != str(path) or not text.startswith(str(path)) or "\n" in text or not text.isprintable():
                    self.unlocated.append(repr(text[:300]))
                elif d.line:
                    self.located += 1
                else:
                    self.file_only += 1
        except BaseException:  # noqa: BLE001 - the point: count what escapes
            self.tracebacks.append(traceback.format_exc()[-2000:])
        spent = time.monotonic() - started
        self.slowest = max(self.slowest, spent)
        if spent >= HANG:
            self.hangs.append(spent)
        return error

    def __str__(self) -> str:
        return (f"{self.configs} configs: {self.valid} valid, {self.invalid} invalid; diagnostics: "
                f"{self.located} at file:line:col, {self.file_only} at file only, {len(self.unlocated)} unlocated; "
                f"{len(self.tracebacks)} tracebacks, {len(self.hangs)} hangs >= {HANG}s, slowest {self.slowest:.2f}s")


def test_fuzzed_configs_through_check_the_cli_and_a_live_reload(tmp_path):
    rng = random.Random(SEED)
    bases = corpus(tmp_path)
    for base in bases:  # the corpus itself is valid
        config.parse(base, tmp_path / "services.toml")
    path = tmp_path / "services.toml"
    tally = Tally()
    invalid: list[bytes] = []
    started = time.monotonic()
    for _ in range(COUNT):
        item = mutate(rng, rng.choice(bases))
        if tally.check(item, path) is not None and isinstance(item, bytes):
            invalid.append(item)
    in_process = time.monotonic() - started
    print(f"\nfuzz seed {SEED}, in-process check ({in_process:.1f}s): {tally}")
    assert not tally.tracebacks, tally.tracebacks[0]
    assert not tally.hangs and not tally.unlocated, (tally.hangs, tally.unlocated[:5])
    assert tally.configs >= 1000 and (len(invalid) >= 1000 or COUNT < 1200)

    # 2. the real CLI, on a sample, four at a time
    sample = rng.sample(invalid, CLI_SAMPLE // 2) + [mutate(rng, rng.choice(bases)) for _ in range(CLI_SAMPLE // 2)]
    files = []
    for index, item in enumerate(sample):
        file = tmp_path / f"cli-{index}.toml"
        file.write_bytes(item if isinstance(item, bytes) else item.encode("utf-8", "surrogatepass"))
        files.append(file)
    codes = {0: 0, 2: 0}
    for chunk in range(0, len(files), 4):
        procs = [(file, subprocess.Popen([sys.executable, "-m", "supervisor", "check", "-c", str(file)],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace"))
                 for file in files[chunk:chunk + 4]]
        for file, proc in procs:
            out, err = proc.communicate(timeout=30)
            assert proc.returncode in (0, 2) and "Traceback" not in err, (file.read_bytes()[:500], err[-2000:])
            codes[proc.returncode] += 1
            if proc.returncode == 2:
                assert err and all(line.startswith(str(file)) for line in err.splitlines()), err[:2000]
    print(f"real CLI check: {len(files)} configs, {codes[0]} ok (exit 0), {codes[2]} located errors (exit 2), 0 tracebacks")

    # 3. a live reload: every invalid file saved over the running one, one supervisor
    good = bases[1]
    path.write_text(good)

    async def live() -> tuple[int, int, float]:
        async with DaemonRun(path) as d:
            pid = await d.until(lambda: d.pid("api"))
            state_dir = d.daemon.state_dir
            client = await asyncio.to_thread(Client, state_dir, 10.0)
            slowest = 0.0
            try:
                for item in invalid:
                    path.write_bytes(item)
                    asked = time.monotonic()
                    try:
                        await asyncio.to_thread(client.call, "reload")
                    except ControlError as exc:
                        message = str(exc)
                    else:
                        raise AssertionError(f"an invalid file was applied: {item[:300]!r}")
                    slowest = max(slowest, time.monotonic() - asked)
                    assert message.startswith(str(path)), message[:500]
                    assert not d.task.done() and d.pid("api") == pid
                    assert d.daemon.last_error
            finally:
                client.close()
            # a few real saves, picked up by the file watcher: bad, good, bad, ...
            saves = 0
            for item in rng.sample(invalid, LIVE_SAVES):
                path.write_text(good)
                await d.until(lambda: not d.daemon.last_error, message="the good file again")
                path.write_bytes(item)
                await d.until(lambda: d.daemon.last_error, message="the bad save reported")
                assert d.of_type("config-error") and not d.task.done() and d.pid("api") == pid
                saves += 1
            reply = await asyncio.to_thread(ask_status, state_dir)
            assert reply["supervisor"]["config_error"] and reply["services"][0]["pid"] == pid
            return len(invalid), saves, slowest

    reloads, saves, slowest = run(live())
    print(f"live reload: {reloads} invalid files through the reload verb (slowest {slowest:.2f}s) and "
          f"{saves} real saves; supervisor alive, service pid unchanged, every error reported and located")
    assert slowest < HANG


def ask_status(state_dir: Path) -> dict:
    with Client(state_dir, 10.0) as client:
        return client.call("status")
