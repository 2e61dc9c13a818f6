"""The man pages lint clean with groff and keep up with the code: every verb and option of
``build_parser()`` is in supervise(1), every config key is an entry in services.toml(5), and
the example in services.toml(5) passes ``supervise check``."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from supervisor import cli
from supervisor.decide import errors
from supervisor.desired import config

ROOT = Path(__file__).resolve().parents[2]
SUPERVISE_1 = ROOT / "man" / "supervise.1"
SERVICES_5 = ROOT / "man" / "services.toml.5"


def plain(roff: str) -> str:
    """The words of roff source: font changes and escapes undone (enough for our pages)."""
    for escape, text in (("\\-", "-"), ("\\(dq", '"'), ("\\(ti", "~"), ("\\(lq", '"'), ("\\(rq", '"'),
                         ("\\&", ""), ("\\e", "\\")):
        roff = roff.replace(escape, text)
    return re.sub(r"\\f[BIRP]", "", roff)


def entries(roff: str) -> set[str]:
    """The first word of every ``.TP`` tag (the line after ``.TP``), e.g. ``check``, ``--env``."""
    lines = roff.splitlines()
    tags = set()
    for index, line in enumerate(lines[:-1]):
        if line.strip() == ".TP":
            tag = plain(lines[index + 1])
            tag = re.sub(r"^\.(B|I|BI|BR|IR|RB)\s+", "", tag).replace('"', " ").strip()
            if tag:
                tags.add(tag.split()[0].rstrip(","))
    return tags


def walk(parser: argparse.ArgumentParser, verb: str = "") -> tuple[set[str], set[str]]:
    """(verbs, option strings) of ``parser`` and its subparsers, recursively."""
    verbs, options = set(), set()
    for action in parser._actions:
        options.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                verbs.add(name)
                more_verbs, more_options = walk(sub, name)
                verbs |= more_verbs
                options |= more_options
    return verbs, options


@pytest.mark.parametrize("page", [SUPERVISE_1, SERVICES_5], ids=lambda p: p.name)
def test_groff_finds_nothing_to_warn_about(page):
    if shutil.which("groff") is None:
        if os.environ.get("CI"):
            pytest.fail("groff is missing; .ci/run installs it")
        pytest.skip("groff is not installed here (CI installs it)")
    result = subprocess.run(["groff", "-ww", "-z", "-man", str(page)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_every_verb_and_option_of_the_parser_is_documented():
    roff = SUPERVISE_1.read_text()
    text, tags = plain(roff), entries(roff)
    verbs, options = walk(cli.build_parser())
    assert verbs >= {"run", "check", "plan", "import"}
    missing_verbs = sorted(v for v in verbs if v not in tags)
    assert not missing_verbs, f"verbs without an entry in man/supervise.1: {missing_verbs}"
    missing = sorted(o for o in options if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", text))
    assert not missing, f"options missing from man/supervise.1: {missing}"


def test_exit_codes_signals_environment_and_files_have_sections():
    roff = SUPERVISE_1.read_text()
    for section in ("SYNOPSIS", "OPTIONS", "VERBS", "EXIT STATUS", "SIGNALS", "ENVIRONMENT", "FILES", "EXAMPLES"):
        assert f".SH {section}" in roff, section
    tags = entries(roff)
    for code in (errors.EXIT_OK, errors.EXIT_ERROR, errors.EXIT_USAGE, errors.EXIT_NOT_RUNNING):
        assert str(code) in tags
    assert {"SUPERVISE_CONFIG", "SUPERVISE_READY_TIMEOUT", "SIGHUP", "SIGTERM"} <= tags


def test_every_config_key_has_an_entry():
    roff = SERVICES_5.read_text()
    tags = entries(roff)
    headings = {plain(line[4:]).strip() for line in roff.splitlines() if line.startswith(".SH ")}
    for key in config.TOP_KEYS:
        assert any(h.startswith(f"[{key}") for h in headings), f"no section for [{key}]"
    for key in config.SUPERVISE_KEYS + config.SERVICE_KEYS + config.CHECK_KEYS + getattr(config, "LOG_KEYS", ()):
        assert key in tags, f"man/services.toml.5 has no entry for {key!r}"


def test_the_example_in_services_toml_5_passes_check(tmp_path):
    roff = SERVICES_5.read_text()
    block = roff.split(".SH EXAMPLE\n", 1)[1].split(".EX\n", 1)[1].split(".EE\n", 1)[0]
    (tmp_path / "worker").mkdir()
    (tmp_path / ".env").write_text("SECRET=x\n")
    desired = config.parse(plain(block), tmp_path / "services.toml")
    assert list(desired.services) == ["db", "api", "worker"]


def test_every_key_of_top_has_an_entry():
    from supervisor import top

    tags = entries(SUPERVISE_1.read_text())
    missing = [key for key, _action, _text in top.KEYS if key not in tags]
    assert not missing, f"keys of `supervise top` without an entry in man/supervise.1: {missing}"
