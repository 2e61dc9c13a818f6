"""Logs: fast writers, invalid UTF-8 and huge lines lose nothing and block nothing."""

from __future__ import annotations

import io

from harness import PY, Stack, run
from supervisor.desired.model import Phase
from supervisor.execute.logs import ConsoleTail
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
            await stack.until(lambda: stack.phase("fast") == Phase.EXITED, timeout=30)
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
            await stack.until(lambda: stack.phase("odd") == Phase.EXITED)
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
            f.write(b"lo\n\xffbad\n[supervise 2026] a note of ours, shown by `supervise logs` too\n")
            f.flush()
        wait_until(lambda: "a note" in out.getvalue(), timeout=5)
    finally:
        tail.stop()
    assert out.getvalue().splitlines() == ["api      | hello", "api      | \ufffdbad",
                                           "api      | [supervise 2026] a note of ours, shown by `supervise logs` too"]


def test_rotation_keeps_whole_lines_in_order_with_no_loss_or_duplicate(tmp_path):
    lines = 60_000
    code = f"import sys; w=sys.stdout.write; [w('%08d\\\\n' % i) for i in range({lines})]; sys.stdout.flush()"
    text = f"""
[services.rot]
command = ["{PY}", "-c", "{code}"]
restart = "never"
log = {{ max_size = "64KiB", backups = 200 }}
"""

    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(text)
            await stack.until(lambda: stack.phase("rot") == Phase.EXITED, timeout=30)
            folder = stack.r.state_dir / "logs"
            rotated = sorted(folder.glob("rot.log.*"), key=lambda p: int(p.suffix[1:]), reverse=True)
            assert len(rotated) >= 5
            numbers = []
            for path in [*rotated, folder / "rot.log"]:
                content = path.read_text()
                assert content.endswith("\n")  # a file never ends in half a line
                numbers += [int(l) for l in content.splitlines() if not l.startswith("[supervise")]
            assert numbers == list(range(lines))

    run(body())


def test_output_with_no_newline_still_rotates(tmp_path):
    """A user's report: 200 MB of ``y`` with no newline made a 142 MB log beside a 10 MiB
    ``max_size``: rotation waited for a line's end. A line going past max_size + LONG_LINE is
    split (as journald splits lines over LineMax) and the file rotated; nothing else is lost."""
    from supervisor.execute.logs import LONG_LINE

    code = "import sys; o=sys.stdout.buffer; [o.write(bytes([0x79])*100000) for _ in range(50)]; o.flush()"
    text = f"""
[services.noeol]
command = ["{PY}", "-c", "{code}"]
restart = "never"
log = {{ max_size = "256KiB", backups = 100 }}
"""

    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(text)
            await stack.until(lambda: stack.replica("noeol") and stack.replica("noeol").phase.value == "exited", timeout=30)
            folder = stack.r.state_dir / "logs"
            files = [folder / "noeol.log", *folder.glob("noeol.log.*")]
            assert len(files) >= 10
            assert max(f.stat().st_size for f in files) <= 256 * 1024 + LONG_LINE + 200
            ys = sum(line.count("y") for f in files for line in f.read_text().splitlines() if not line.startswith("[supervise"))
            assert ys == 5_000_000  # split, never lost

    run(body())


def test_log_file_deleted_or_moved_by_hand_is_recreated(tmp_path):
    code = "import sys,time\\nfor i in range(100000):\\n    print(i, flush=True); time.sleep(0.002)"
    text = f"""
[services.moved]
command = ["{PY}", "-c", "{code}"]
log = {{ timestamps = true }}
"""

    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(text)
            log = stack.r.state_dir / "logs" / "moved.log"
            await stack.until(lambda: log.exists() and log.stat().st_size > 100)
            log.rename(log.with_name("kept-by-hand.log"))
            await stack.until(lambda: log.exists() and log.stat().st_size > 100, message="a new log file")
            log.unlink()
            await stack.until(lambda: log.exists() and log.stat().st_size > 100, message="recreated again")
            line = log.read_text().splitlines()[-1]
            stamp, number = line.rsplit(" ", 1)
            assert number.isdigit() and stamp[:4].isdigit() and "T" in stamp

    run(body())


def test_output_without_a_newline_shows_up(tmp_path):
    code = "import sys,time; sys.stdout.write('progress .'); sys.stdout.flush(); time.sleep(0.5); sys.stdout.write('..done\\\\n'); sys.stdout.flush(); time.sleep(300)"
    text = f"""
[services.bar]
command = ["{PY}", "-c", "{code}"]
"""

    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(text)
            await stack.until(lambda: "progress ." in stack.log("bar"), timeout=5, message="the unfinished line")
            assert "done" not in stack.log("bar")
            await stack.until(lambda: "progress ...done\n" in stack.log("bar"), timeout=5)

    run(body())


def test_writers_at_once_share_one_copy_pipe_and_lose_nothing(tmp_path):
    """Every replica pump tees through the executor's one copy pipe (logs.CopyPipe): three
    services writing stdout and stderr at once each get exactly their own lines, in order."""
    lines = 20_000
    code = ("import sys; n=sys.argv[1]; o=sys.stdout.write; e=sys.stderr.write; "
            f"[(o('%s out %d\\\\n' % (n, i)), e('%s err %d\\\\n' % (n, i))) for i in range({lines})]; "
            "sys.stdout.flush(); sys.stderr.flush()")
    names = ("w1", "w2", "w3")
    text = "".join(f"""
[services.{name}]
command = ["{PY}", "-c", "{code}", "{name}"]
restart = "never"
""" for name in names)

    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(text)
            await stack.until(lambda: all(stack.phase(n) == Phase.EXITED for n in names),
                              timeout=60)
            executor = stack.r.local
            assert executor.copy_pipe.fds is not None  # one pipe, made once, for all of them
            for name in names:
                log = stack.log(name).splitlines()
                for stream in ("out", "err"):
                    got = [line for line in log if line.startswith(f"{name} {stream} ")]
                    assert got == [f"{name} {stream} {i}" for i in range(lines)]
                assert not [line for line in log if line.split(" ")[0] in names and not line.startswith(name)]

    run(body())


def test_a_streaming_fifo_is_read_in_batches_and_nothing_waits_or_is_lost(tmp_path):
    """After a look that moved a little (under logs.BATCH_BYTES), the pump stops watching the
    FIFO for logs.BATCH_WAIT s instead of waking at the writer's next write; then it reads what
    came meanwhile, all of it, in order. A real FIFO and log file; the loop's own timer."""
    import asyncio
    import os

    from supervisor.execute import logs

    async def body():
        loop = asyncio.get_running_loop()
        path, read_fd, child_fd = logs.make_fifo(tmp_path, "w", 0)
        sink = logs.LogSink("w", tmp_path / "w.log")
        pump = logs.Pump(loop, read_fd, sink, keep_until_written=True, copy_pipe=logs.CopyPipe())
        try:
            os.write(child_fd, b"".join(b"first %d\n" % i for i in range(1000)))
            pump._readable()  # the look the loop makes when the FIFO turns readable
            assert pump.paused  # moved a little: not watching for the next write
            assert sink.path.read_bytes().count(b"first ") == 1000
            os.write(child_fd, b"".join(b"second %d\n" % i for i in range(1000)))
            deadline = loop.time() + 10
            while sink.path.read_bytes().count(b"second ") < 1000:
                assert loop.time() < deadline, "the batch after the pause never came"
                await asyncio.sleep(logs.BATCH_WAIT)  # the loop runs the pump's resume timer
            lines = sink.path.read_bytes().splitlines()
            assert lines == [b"first %d" % i for i in range(1000)] + [b"second %d" % i for i in range(1000)]
        finally:
            pump.close()
            os.close(child_fd)
            sink.close()
            pump.copy.close()
            os.unlink(path)

    asyncio.run(body())


def test_console_tail_loses_no_line_when_the_file_is_rotated_between_two_reads(tmp_path):
    """A user's report: ``supervise logs -f`` dropped the last lines of a file rotated before
    the follower read them (it reopened the path: the new, shorter file). The open file is read
    to its end first, then the new one from its start."""
    out = io.StringIO()
    tail = ConsoleTail(tmp_path, stream=out, colour=False)
    path = tmp_path / "api.log"
    path.write_bytes(b"")
    tail.add("api", path)
    with open(path, "ab") as f:
        f.write(b"a1\na2\n")
    tail.poll(path)
    with open(path, "ab") as f:
        f.write(b"a3\n")  # written to the old file after the last read...
    path.rename(tmp_path / "api.log.1")  # ...which is then rotated
    path.write_bytes(b"b1\n")
    tail.poll(path)
    with open(path, "ab") as f:
        f.write(b"b2\n")
    tail.poll(path)
    tail.stop()
    assert [line.split("| ")[1] for line in out.getvalue().splitlines()] == ["a1", "a2", "a3", "b1", "b2"]
