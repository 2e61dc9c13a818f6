"""What `pip install` gives: the man pages in PREFIX/share/man, where man(1) finds them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_pip_install_puts_the_man_pages_where_man_finds_them(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"),
                            str(ROOT)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    wheel = next((tmp_path / "dist").glob("supervise-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    data = [n.split(".data/data/", 1)[1] for n in names if ".data/data/" in n]
    assert sorted(data) == ["share/man/man1/supervise.1", "share/man/man5/services.toml.5"]

    prefix = tmp_path / "venv"
    venv.create(prefix, with_pip=True)
    installed = subprocess.run([str(prefix / "bin" / "pip"), "install", "-q", "--no-deps", "--no-index", str(wheel)],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    page = prefix / "share" / "man" / "man1" / "supervise.1"
    assert page.read_bytes() == (ROOT / "man" / "supervise.1").read_bytes()
    assert (prefix / "share" / "man" / "man5" / "services.toml.5").is_file()
    if shutil.which("man") is None:
        if os.environ.get("CI"):
            pytest.fail("man is missing; .ci/run installs man-db")
        pytest.skip("man is not installed here (CI installs it)")
    env = {**os.environ, "PATH": f"{prefix / 'bin'}:/usr/bin:/bin"}
    env.pop("MANPATH", None)
    for args, expected in ((["supervise"], page), (["5", "services.toml"], prefix / "share/man/man5/services.toml.5")):
        where = subprocess.run(["man", "-w", *args], capture_output=True, text=True, env=env, timeout=60)
        assert where.stdout.strip() == str(expected), where.stderr
