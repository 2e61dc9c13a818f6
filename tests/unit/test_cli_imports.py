"""The client verbs import only what they need (issue 17: the whole `supervise status` of
2,000 services within 100 ms, and imports were half of it). Checked by module, not by time:
a fresh interpreter runs the verb and lists what it imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

#: Never imported by a client verb: the validator and the model (dataclasses brings inspect,
#: ast, dis), logging (threading, traceback), the event loop, the TOML writer, psutil.
HEAVY = ("supervisor.desired.config", "supervisor.desired.model", "supervisor.decide.graph", "dataclasses", "inspect", "logging",
         "asyncio", "tomlkit", "psutil", "threading")

PROBE = """
import json, sys
from supervisor import cli
code = cli.main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def run_verb(*argv: str) -> tuple[int, set[str]]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out["code"], set(out["modules"])


@pytest.mark.parametrize("verb", ["status", "stop", "reload"])
def test_client_verbs_import_nothing_heavy(tmp_path: Path, verb: str) -> None:
    """No supervisor runs: the verb reads state_dir, finds no socket and exits 1, having
    imported none of HEAVY."""
    path = tmp_path / "services.toml"
    path.write_text('[supervise]\nstate_dir = "st"\n\n[services.a]\ncommand = ["sleep", "1"]\n')
    argv = [verb, "--config", str(path)] + (["a"] if verb == "stop" else [])
    code, modules = run_verb(*argv)
    assert code == 1
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_a_broken_file_still_finds_the_state_dir_lightly(tmp_path: Path) -> None:
    """A file tomli refuses (a save under way): state_dir comes from its line, still without
    the validator."""
    path = tmp_path / "services.toml"
    path.write_text('[supervise]\nstate_dir = "st"\n\n[services.a\ncommand = ["sleep", "1"]\n')
    code, modules = run_verb("status", "--config", str(path))
    assert code == 1
    assert "supervisor.desired.config" not in modules
