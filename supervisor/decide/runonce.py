"""Run once (``supervise run --exit-when-done`` / ``--exit-when NAME``): when the run is over
and with which exit status. Pure: a function of the desired and the observed state.

The rule (documented in supervise(1)):

- A **job** is a service whose ``restart`` is ``"never"`` or ``"on-failure"``: it can finish.
  A service with ``restart = "always"`` (a server) never finishes by itself.
- A replica **finished** when it exited and will not be started again (phase ``exited``:
  ``never`` after any exit, ``on-failure`` after exit 0), or gave up (phase ``failed``: the
  start limit); a service when every wanted replica did (``replicas = 0``: at once), or when
  its build failed with nothing running, or when a user holds it stopped.
- It **failed** when a replica finished with anything but exit 0, or its build failed.
- ``--exit-when-done``: the run is over when every job has finished, or as soon as any
  service fails (a server that hits its start limit included: the jobs may wait on it).
- ``--exit-when NAME`` (repeatable): over when every named service has finished, or as soon
  as one of them, or a service one of them depends on (transitively), fails.

The exit status is the first failure's, as a shell gives it: its exit code, 128+N for a death
by signal N, 1 when there is no code (a failed build, an exit 0 that still hit the start
limit); 0 when everything finished with exit 0. (``docker compose up --exit-code-from`` and
``--abort-on-container-failure`` are the models.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from ..desired.model import Exit, Observed, Phase, RestartPolicy, ServiceObserved, ServiceSpec


class RunOnceError(ValueError):
    """The run-once request cannot be met by this file (no job; an unknown or endless named
    service). ``code`` is the exit status (2 usage, 4 unknown service)."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Until:
    """What ends the run: ``names`` empty means every job (``--exit-when-done``)."""

    names: tuple[str, ...] = ()

    def describe(self) -> str:
        return "every job has finished" if not self.names else " and ".join(self.names) + " finished"


@dataclass(frozen=True)
class Outcome:
    """The run is over: exit with ``code``; ``reason`` is one line for the log."""

    code: int
    reason: str


def is_job(spec: ServiceSpec) -> bool:
    """A service that can finish: ``restart`` is ``never`` or ``on-failure``."""
    return spec.restart is not RestartPolicy.ALWAYS


def check(until: Until, specs: Mapping[str, ServiceSpec]) -> None:
    """Refuse at start what could never end: no job at all with ``--exit-when-done``, a named
    service the file lacks (code 4) or that has ``restart = "always"``. Raises RunOnceError."""
    if not until.names:
        if not any(is_job(s) for s in specs.values()):
            raise RunOnceError('--exit-when-done: no service can finish (each has restart = "always"); give the '
                               'jobs restart = "never" or "on-failure", or name one with --exit-when NAME')
        return
    unknown = [n for n in until.names if n not in specs]
    if unknown:
        raise RunOnceError("--exit-when: unknown service: " + ", ".join(unknown), 4)
    endless = [n for n in until.names if not is_job(specs[n])]
    if endless:
        raise RunOnceError(f'--exit-when: {", ".join(endless)} has restart = "always" and never finishes; '
                           'give it restart = "never" or "on-failure"')


def exit_status(exit: Exit | None) -> int:
    """A shell's ``$?`` for a process that ended with ``exit``: its code, 128+N for signal N,
    1 when unknown (an adopted process, no process at all)."""
    if exit is None:
        return 1
    if exit.signal is not None:
        return 128 + exit.signal
    return exit.code if exit.code is not None else 1


def _dependencies(names: Sequence[str], specs: Mapping[str, ServiceSpec]) -> list[str]:
    """``names`` and every service they depend on, transitively, in file order."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen or name not in specs:
            continue
        seen.add(name)
        todo.extend(d.service for d in specs[name].depends_on)
    return [n for n in specs if n in seen]


def state(spec: ServiceSpec, obs: ServiceObserved | None) -> tuple[bool, Outcome | None]:
    """(finished, failure) of one service: ``failure`` is set as soon as one replica failed,
    even while others still run."""
    if spec.replicas == 0:
        return True, None
    if obs is None:
        return False, None
    found = [obs.replicas.get(i) for i in range(spec.replicas)]
    if obs.build_failed and not any(r is not None and r.running for r in found):
        return True, Outcome(1, f"{spec.name}: its build failed")
    finished = True
    for replica in found:
        if replica is None:
            finished = False
            continue
        who = f"{spec.name}[{replica.index}]"
        if replica.phase is Phase.FAILED:
            code = exit_status(replica.last_exit) or 1
            return True, Outcome(code, f"{who} failed ({replica.message or replica.last_exit})")
        if replica.phase is Phase.EXITED and not replica.running:
            if replica.last_exit is None or not replica.last_exit.success:
                return True, Outcome(exit_status(replica.last_exit), f"{who} exited: {replica.last_exit or 'unknown'}")
            continue
        finished = False
    if obs.held:
        return True, None
    return finished, None


def outcome(until: Until, specs: Mapping[str, ServiceSpec], observed: Observed) -> Outcome | None:
    """The run's end, or None while it goes on. ``specs`` is the file's services now (in file
    order, which breaks ties between failures seen at once)."""
    targets = list(until.names) if until.names else [n for n, s in specs.items() if is_job(s)]
    watched = list(specs) if not until.names else _dependencies(targets, specs)
    for name in watched:
        _finished, failure = state(specs[name], observed.services.get(name))
        if failure is not None:
            return failure
    if all(name in specs and state(specs[name], observed.services.get(name))[0] for name in targets):
        return Outcome(0, f"{until.describe()} (exit 0)")
    return None
