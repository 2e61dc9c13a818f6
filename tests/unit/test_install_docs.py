"""The README's install steps and upgrade text agree with examples/supervise.service."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
UNIT = (ROOT / "examples" / "supervise.service").read_text()


def setting(name: str) -> str:
    values = re.findall(rf"(?m)^{name}=(.*)$", UNIT)
    assert len(values) == 1, name
    return values[0]


def test_execstart_is_what_the_readme_installs():
    binary = setting("ExecStart").split()[0]
    assert binary.endswith("/bin/supervise")
    prefix = binary[: -len("/bin/supervise")]
    assert f"python3 -m venv {prefix} && sudo {prefix}/bin/pip install ." in README
    assert f"python3 -m venv {prefix} && sudo {prefix}/bin/pip install" in UNIT  # the unit's own comment
    assert f"`{binary}`" in README
    config = setting("ExecStart").split("--config ", 1)[1].split()[0]  # the file the unit runs is made
    assert f"{binary} init --config {config}" in README
    state = setting("StateDirectory")
    assert f'state_dir = "/var/lib/{state}"' in README and f'state_dir = "/var/lib/{state}"' in UNIT


def test_in_place_upgrade_text_matches_the_units_killmode():
    mode = setting("KillMode")
    assert mode == "mixed"
    # the README says upgrades in place keep the services only under KillMode=process, and what
    # the shipped unit's mode does instead
    assert "needs `KillMode=process`" in README and f"has `KillMode={mode}`" in README
    assert "under which systemd SIGKILLs what is left once supervise exits" in README
    assert "under mixed a\n# restart of supervise" in UNIT
    # the upgrade steps: a restart under the shipped mode, SIGQUIT to the main process under process
    assert "`sudo systemctl restart\nsupervise`: under the unit's `KillMode=mixed` that restarts the services too" in README
    assert "systemctl kill --kill-whom=main -s QUIT supervise" in README and \
        "systemctl kill --kill-whom=main -s QUIT supervise" in UNIT
