"""The client verbs' quick read of ``[supervise]`` (supervisor.desired.peek.supervise_table):
for every valid TOML spelling of the table it gives what a whole-file parse gives, while it
parses only the part of the file before the services when it can (issue 17: status at 2,000)."""

from __future__ import annotations

import tomli

import pytest

from supervisor.desired import peek

SERVICES = '[services.a]\ncommand = ["sleep", "1"]\n\n[services.b]\ncommand = ["true"]\n'

SPELLINGS = [
    '[supervise]\nstate_dir = "st"\n\n' + SERVICES,
    '[ supervise ]  # comment\nstate_dir = \'lit\\eral\'\nruntime = "local"\n' + SERVICES,
    '["supervise"]\n"state_dir" = "q"\n' + SERVICES,
    "['supervise']\nstate_dir = \"lq\"\n" + SERVICES,
    '["\\u0073upervise"]\nstate_dir = "escaped header"\n' + SERVICES,
    'supervise.state_dir = "dotted"\n' + SERVICES,
    'supervise . "state_dir" = "dotted quoted"\n' + SERVICES,
    'supervise = { state_dir = "inline", runtime = "local" }\n' + SERVICES,
    '"supervise" = { state_dir = "quoted inline" }\n' + SERVICES,
    SERVICES + '\n[supervise]\nstate_dir = "at the end"\n',
    SERVICES + '\n["supervise"]\nstate_dir = "quoted at the end"\n',
    '[supervise.log]\nmax_size = "1MiB"\n' + SERVICES + '[supervise]\nstate_dir = "after its subtable"\n',
    '[supervise]\nstate_dir = "st"\n[supervise.log]\nmax_size = "1MiB"\n' + SERVICES,
    '[supervise]\nstate_dir = """multi\nline"""\n' + SERVICES,
    '[supervise]\nstate_dir = "s"\n' + '[services.a]\ncommand = """\n[supervise]\n"""\n',
    '[services.a]\ncommand = ["x", \n[1],\n]\n[supervise]\nstate_dir = "after a multi-line array"\n',
    'title = """\n[services.fake]\n"""\n[supervise]\nstate_dir = "after a string with a header in it"\n' + SERVICES,
    'x = [\n[1],\n]\nsupervise.state_dir = "after an array"\n' + SERVICES,
    '[supervisex]\na = 1\n[supervise]\nstate_dir = "near name"\n' + SERVICES,
    '[[supervise]]\nstate_dir = "array of tables"\n' + SERVICES,
    SERVICES,
    '[supervise]\n' + SERVICES,
    "",
    '\r\n[supervise]\r\nstate_dir = "crlf"\r\n[services.a]\r\ncommand = ["true"]\r\n',
    '\t[supervise]\nstate_dir = "tab"\n' + SERVICES,
]


@pytest.mark.parametrize("text", SPELLINGS)
def test_the_table_is_the_whole_files(text: str) -> None:
    assert peek.supervise_table(text) == tomli.loads(text).get("supervise", {})


@pytest.mark.parametrize("text", [
    '[supervise]\nstate_dir = "a"\n[supervise]\nstate_dir = "b"\n',  # a table defined twice
    '[services.a]\ncommand = ["x"\n[supervise]\nstate_dir = "c"\n',  # an array left open
    'supervise.state_dir = "d"\n[services.a]\ncommand =\n[supervise]\n',
])
def test_a_file_that_is_not_toml_with_supervise_after_the_cut_is_none(text: str) -> None:
    assert peek.supervise_table(text) is None


def test_a_broken_service_after_the_cut_still_gives_the_table() -> None:
    """A save under way: what `status` needs to reach the supervisor is still read."""
    text = '[supervise]\nstate_dir = "st"\n[services.a\ncommand = ["sleep", "1"]\n'
    assert peek.supervise_table(text) == {"state_dir": "st"}


def test_the_services_are_not_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The part parsed is the [supervise] table alone (by length: 2,000 services stay unread)."""
    seen: list[int] = []
    real = peek.fast_data

    def counting(text: str):
        seen.append(len(text))
        return real(text)

    monkeypatch.setattr(peek, "fast_data", counting)
    head = '[supervise]\nstate_dir = "st"\n\n'
    text = head + "".join(f'[services.s{i}]\ncommand = ["sleep", "1"]\n\n' for i in range(2000))
    assert peek.supervise_table(text) == {"state_dir": "st"}
    assert seen == [len(head)]
