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


#: Never imported by a supervisor that starts a plain local-process file (issue 17: its PSS
#: against supervisord's): what only a mistake in the file (difflib), an upgrade or a handover
#: (importlib.metadata, and with it email, zipfile, csv), or nothing any more (uuid) needs.
DAEMON_LAZY = ("difflib", "importlib.metadata", "email", "zipfile", "csv", "uuid", "tomlkit", "git", "docker",
               "supervisor.kube", "supervisor.execute.executors.container")

DAEMON_PROBE = """
import json, os, signal, sys, threading, time
from supervisor import cli

record, out = sys.argv[1], sys.argv[2]

def probe():
    deadline = time.monotonic() + 60
    while not os.path.exists(record) and time.monotonic() < deadline:
        time.sleep(0.02)  # polling for the service's state record, bounded
    with open(out, "w") as f:
        json.dump(sorted(sys.modules), f)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=probe, daemon=True).start()
sys.exit(cli.main(sys.argv[3:]))
"""


def test_a_supervisor_of_a_plain_file_imports_nothing_it_does_not_use(tmp_path: Path) -> None:
    """A real supervisor starts one `sleep` service; once the service's state record is written
    (its start is done) the supervisor lists what it imported and is stopped: none of
    DAEMON_LAZY (by module list, not by time)."""
    path = tmp_path / "services.toml"
    path.write_text('[supervise]\nstate_dir = "st"\n\n[services.a]\ncommand = ["sleep", "30"]\n')
    record, out = tmp_path / "st" / "state" / "a.json", tmp_path / "modules.json"
    proc = subprocess.run([sys.executable, "-c", DAEMON_PROBE, str(record), str(out), "-q", "--config", str(path)],
                          capture_output=True, text=True, timeout=90, cwd=tmp_path)
    assert out.exists(), proc.stderr[-2000:]
    modules = set(json.loads(out.read_text()))
    assert "supervisor.execute.service" in modules and "asyncio" in modules  # it did run
    lazy = sorted(m for m in modules if m in DAEMON_LAZY or m.startswith(tuple(p + "." for p in DAEMON_LAZY)))
    assert lazy == [], lazy
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_version_read_without_importlib_metadata_is_the_one_it_finds(tmp_path: Path, monkeypatch) -> None:
    """supervisor._metadata_version (the start-up log's version, without importlib.metadata)
    names the distribution importlib.metadata finds first: this install's, then a planted
    folder ahead on sys.path (its .dist-info before its .egg-info)."""
    from importlib.metadata import version

    import supervisor

    assert supervisor._metadata_version() == version("supervise")
    (tmp_path / "supervise-9.8.7.dist-info").mkdir()
    (tmp_path / "supervise-9.8.7.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: supervise\nVersion: 9.8.7\n\nVersion: 1 (the body, not a header)\n")
    (tmp_path / "supervise.egg-info").mkdir()
    (tmp_path / "supervise.egg-info" / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: supervise\nVersion: 1.0\n")
    (tmp_path / "supervise_extra-2.0.dist-info").mkdir()  # another distribution
    monkeypatch.setattr(sys, "path", [str(tmp_path / "missing"), str(tmp_path), *sys.path])
    assert supervisor._metadata_version() == "9.8.7" == version("supervise")
