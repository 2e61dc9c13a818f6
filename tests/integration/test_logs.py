"""Logs: fast writers, invalid UTF-8 and huge lines lose nothing and block nothing."""

from __future__ import annotations

import io

from harness import PY, Stack, run
from supervisor.logs import ConsoleTail
from conftest import wait_until


def test_fast_writer_loses_no_line(tmp_path):
    lines = 200_000
    code = f"import sys; w=sys.stdout.write; [w('line %d\\\\n' % i) for i in range({lines})]; sys.stdout.flush()"
    text = f"""
[services.fast]
command = ["{PY}", "-c", "{code}"]
restart = "never"
"""

    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(text)
            await stack.until(lambda: stack.replica("fast") and stack.replica("fast").phase.value == "exited", timeout=30)
            got = [l for l in stack.log("fast").splitlines() if l.startswith("line ")]
            assert got == [f"line {i}" for i in range(lines)]

    run(body())


def test_invalid_utf8_and_a_huge_line_are_kept_byte_for_byte(tmp_path):
    code = ("import sys; o=sys.stdout.buffer; o.write(bytes([0xff,0xfe,0x41,0x0a])); "
            "o.write(bytes([0x78])*3000000 + bytes([0x0a])); o.flush()")
    text = f"""
[services.odd]
command = ["{PY}", "-c", "{code}"]
restart = "never"
"""

    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(text)
            await stack.until(lambda: stack.replica("odd") and stack.replica("odd").phase.value == "exited")
            data = (stack.r.state_dir / "logs" / "odd.log").read_bytes()
            assert b"\xff\xfeA\n" + b"x" * 3_000_000 + b"\n" in data

    run(body())


def test_console_tail_prefixes_lines_and_joins_partial_writes(tmp_path):
    out = io.StringIO()
    tail = ConsoleTail(tmp_path, stream=out, colour=False)
    path = tmp_path / "api.log"
    path.write_bytes(b"old line, not shown\n")
    tail.add("api", path)
    tail.start()
    try:
        with open(path, "ab") as f:
            f.write(b"hel")
            f.flush()
            f.write(b"lo\n\xffbad\n[supervise 2026] a note, shown on stderr instead\n")
            f.flush()
        wait_until(lambda: "bad" in out.getvalue(), timeout=5)
    finally:
        tail.stop()
    assert out.getvalue().splitlines() == ["api      | hello", "api      | \ufffdbad"]
