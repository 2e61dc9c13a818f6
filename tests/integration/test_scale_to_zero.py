"""``replicas`` scaled down to 0 in a running supervisor: the replicas stop and the service is
as asked (``supervise status`` exits 0, README's exit codes), its row says ``desired`` 0. Real
processes through the reconciler, the status verb's own rows and exit code."""

from __future__ import annotations

import argparse
import contextlib
import io
import time

from harness import PY, Stack, run

from supervisor.control.verbs.status import Status
from supervisor.observe import views


def config(replicas: int) -> str:
    return f"""
[services.idle]
command = ["{PY}", "-c", "import time; time.sleep(300)"]
replicas = {replicas}
"""


def exit_code(stack: Stack) -> int:
    rows = views.status_rows(stack.r.observe(), [], time.time(), ["idle"] if stack.r.desired.services["idle"].replicas
                             else [])
    with contextlib.redirect_stdout(io.StringIO()):
        return Status().show({"services": rows}, argparse.Namespace(json=True))


def test_a_service_scaled_to_zero_is_as_asked(tmp_path):
    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(config(2))
            await stack.until(lambda: stack.pid("idle", 0) and stack.pid("idle", 1), message="two replicas")
            assert exit_code(stack) == 0
            plan = await stack.apply(config(0))
            assert [str(a) for a in plan] == ["stop idle[1]: replicas 2 -> 0", "stop idle[0]: replicas 2 -> 0"]
            assert not stack.r.controllers["idle"].replicas
            assert stack.r.observe().services["idle"].spec.replicas == 0
            assert exit_code(stack) == 0
            assert not stack.r.plan()  # and nothing left to do
            await stack.apply(config(1))
            await stack.until(lambda: stack.pid("idle", 0), message="scaled up again")

    run(body())
