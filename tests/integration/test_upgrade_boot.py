"""The old version's guard (supervisor/upgrade_boot.py) around a new version's start, with real
processes: a stand-in "new version" is a ``supervisor/cli.py`` in tmp_path (on PYTHONPATH)
that fails to import, raises, hangs or says ready; the fallback is a real Python that reports
its pid and the hand-over it was given. The guard runs as a self-update runs it:
``python -P boot.py ARGS`` with ``SUPERVISE_BOOT`` in the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PY = sys.executable
BOOT = Path(__file__).resolve().parents[2] / "supervisor" / "upgrade_boot.py"
FALLBACK = ("import json, os, sys; print(json.dumps({'pid': os.getpid(), 'argv': sys.argv[1:], "
            "'handover': json.loads(os.environ['SUPERVISE_HANDOVER']), 'boot': 'SUPERVISE_BOOT' in os.environ}))")

NEW = {
    "import error": "raise SyntaxError('a broken module')\n",
    "raises": "def main(args):\n    raise RuntimeError('broken on start')\n",
    "exits early": "def main(args):\n    return 2\n",
    "hangs": "import time\ndef main(args):\n    time.sleep(60)\n",
    "ready": ("import os\ndef main(args):\n    fd = int(os.environ.pop('SUPERVISE_READY_FD'))\n"
              "    os.write(fd, b'ready\\n'); os.close(fd)\n    print('new', os.getpid(), args, flush=True)\n    return 3\n"),
}


def run_boot(tmp_path: Path, new: str, deadline: float = 30.0) -> tuple[subprocess.CompletedProcess, int]:
    package = tmp_path / "new" / "supervisor"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "cli.py").write_text(new)
    handover = json.dumps({"revision": "old", "failed": {"to": "0.9", "error": ""}})
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "new"), "SUPERVISE_HANDOVER": json.dumps({"revision": "new"}),
           "SUPERVISE_BOOT": json.dumps({"fallback": [PY, "-c", FALLBACK, "--config", "x.toml"], "handover": handover,
                                         "keep_fds": [], "deadline": deadline})}
    proc = subprocess.Popen([PY, "-P", str(BOOT), "--config", "x.toml"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), proc.pid


@pytest.mark.parametrize(("case", "reason"), [
    ("import error", "SyntaxError: a broken module"),
    ("raises", "RuntimeError: broken on start"),
    ("exits early", "it exited with status 2 before it was ready"),
    ("hangs", "it did not say it was ready within 0.5s"),
])
def test_a_new_version_that_does_not_start_gives_way_to_the_old_one_in_the_same_process(tmp_path, case, reason):
    result, pid = run_boot(tmp_path, NEW[case], deadline=0.5 if case == "hangs" else 30.0)
    assert result.returncode == 0, result.stderr
    back = json.loads(result.stdout.strip().splitlines()[-1])
    assert back["pid"] == pid  # exec'd: the same process
    assert back["argv"] == ["--config", "x.toml"]
    assert back["handover"]["revision"] == "old" and reason in back["handover"]["failed"]["error"]
    assert not back["boot"]  # the guard's own variable is not passed on
    assert "going back to the previous one" in result.stderr


def test_a_new_version_that_said_ready_is_on_its_own(tmp_path):
    result, pid = run_boot(tmp_path, NEW["ready"])
    assert result.returncode == 3  # its own exit status, no fallback
    assert result.stdout.split() == ["new", str(pid), "['--config',", "'x.toml']"]
    assert "going back" not in result.stderr
