"""The pure diff: ``plan(desired, observed) -> Plan``. No I/O, no clock, no processes.

The rules (README.md, "How it behaves"):

- a service in the file and not running is fetched, built and started; one running and no
  longer in the file is stopped (dependents first);
- a change to what a process is made of (command, env, cwd, source, build, shell, user)
  restarts that service alone; a change to how it is supervised (restart policy, backoff,
  start limit, stop signal/timeout, checks, dependencies) is applied in place, no restart;
- ``replicas`` scales: missing indices start, indices >= the new count stop, others untouched;
- a restart cascades to a dependent only where the dependent asks for it
  (``depends_on = { db = { condition = "started", restart = true } }``, compose's rule);
- a newer source revision (from the git poller or a watched folder) rebuilds and replaces;
- a service held by a user stop, or failed on its start limit with an unchanged spec, is left
  alone (systemd: ``failed`` until ``reset-failed`` or a changed unit).
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from . import graph
from ..desired.model import Desired, Observed, ServiceObserved, ServiceSpec, Version

#: Fields whose change means new processes. Everything else is applied to the running ones.
RESTART_FIELDS = ("command", "source", "build", "cwd", "environment", "shell", "user", "ports", "volumes",
                  "image_build", "runtime", "cluster")
#: Fields whose change also needs a new fetch and build before the restart.
REBUILD_FIELDS = ("source", "build", "image_build", "cluster")


class ActionKind(str, enum.Enum):
    """What an :class:`Action` does; ``update`` applies settings in place, restarting nothing."""
    FETCH = "fetch"
    SNAPSHOT = "snapshot"  # a local folder copied into an immutable snapshot (sources/path.py)
    PULL = "pull"  # an image source: inspected, pulled when the engine lacks it
    BUILD = "build"
    START = "start"
    STOP = "stop"
    RESTART = "restart"
    UPDATE = "update"  # apply supervision settings in place, nothing restarts

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.value


@dataclass(frozen=True)
class Action:
    """One step: ``kind`` on ``service`` (``replica`` index, or None for the whole service)."""

    kind: ActionKind
    service: str
    replica: int | None
    reason: str

    def __str__(self) -> str:
        target = self.service if self.replica is None else f"{self.service}[{self.replica}]"
        return f"{self.kind.value} {target}: {self.reason}"


@dataclass(frozen=True)
class Plan:
    """An ordered tuple of actions. Empty means desired and observed state agree."""

    actions: tuple[Action, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.actions)

    def __iter__(self):
        return iter(self.actions)

    def __len__(self) -> int:
        return len(self.actions)

    def for_service(self, name: str) -> tuple[Action, ...]:
        """The actions on service ``name``, in plan order."""
        return self._by_service.get(name, ())

    @functools.cached_property
    def _by_service(self) -> dict[str, tuple[Action, ...]]:
        # Built once: the reconciler asks for each service's actions several times, and a scan
        # of every action each time made applying a plan of 2,000 starts quadratic.
        grouped: dict[str, list[Action]] = {}
        for action in self.actions:
            grouped.setdefault(action.service, []).append(action)
        return {name: tuple(actions) for name, actions in grouped.items()}

    def services(self) -> tuple[str, ...]:
        """Service names in the order the plan first touches them."""
        return tuple(dict.fromkeys(a.service for a in self.actions))

    def lines(self) -> list[str]:
        """``kind target: reason`` per action, as ``supervise plan`` prints them."""
        return [str(a) for a in self.actions]


def dependency_order(specs: Mapping[str, ServiceSpec]) -> list[str]:
    """Names with every dependency before its dependents, otherwise in file order
    (:func:`supervisor.decide.graph.order`; config validation rejects cycles)."""
    return graph.order(specs)


def plan(desired: Desired, observed: Observed, revisions: Mapping[str, str] | None = None) -> Plan:
    """Diff ``desired`` against ``observed``: the actions that converge the machine.

    ``revisions`` maps a service name to the newest known revision of its source (git commit
    or folder hash); a service whose running revision differs is rebuilt and replaced.
    """
    revisions = revisions or {}
    actions: list[Action] = []
    specs = desired.services

    # Removed services stop first, dependents before their dependencies.
    removed = {name: obs.spec for name, obs in observed.services.items() if name not in specs and obs.spec}
    for name in reversed(dependency_order(removed)):
        for index in sorted(observed.services[name].replicas, reverse=True):
            actions.append(Action(ActionKind.STOP, name, index, "removed from config"))
        if not observed.services[name].replicas:
            # nothing runs (still fetching or building, held, failed to build): the service
            # still goes, with whatever it was preparing
            actions.append(Action(ActionKind.STOP, name, None, "removed from config"))

    restarting: dict[str, str] = {}
    for name in dependency_order(specs):
        spec = specs[name]
        obs = observed.services.get(name)
        cascade = next((d.service for d in spec.depends_on if d.restart and d.service in restarting), None)
        actions.extend(_plan_service(spec, obs, revisions.get(name), cascade, restarting))
    return Plan(tuple(actions))


def _plan_service(
    spec: ServiceSpec,
    obs: ServiceObserved | None,
    revision: str | None,
    cascade: str | None,
    restarting: dict[str, str],
) -> list[Action]:
    name = spec.name
    if obs is None or obs.spec is None:
        if spec.slots == 0:
            return []
        return _deploy(spec, "new service", range(spec.slots), ActionKind.START)
    if obs.held:
        return []  # a user stop holds until a user start
    changed = () if spec == obs.spec else spec.changed_fields(obs.spec)  # equal: most services of a reload
    running_revision = obs_revision(obs)
    if running_revision is not None:
        new_revision = (revision is not None and not same_revision(revision, running_revision)
                        and not (obs.build_failed and same_revision(revision, obs.failed_revision)))
    else:  # never deployed (its first fetch or build failed): any other revision is worth a try
        new_revision = (revision is not None and obs.build_failed
                        and not same_revision(revision, obs.failed_revision))
    if (obs.failed or obs.build_failed) and not changed and not new_revision and cascade is None:
        return []  # waits for a change of the file or the source, or a user restart

    rebuild = [f for f in changed if f in REBUILD_FIELDS]
    # on a cluster every change is applied by the one replica, the Deployment (its pods roll)
    restart = [f for f in changed if f in RESTART_FIELDS or spec.cluster is not None]
    if restart:
        reason = _changed_reason(restart, obs.spec, spec)
    elif new_revision:
        reason = f"new revision {(running_revision or 'none')[:8]} -> {revision[:8]}"  # type: ignore[index]
    elif cascade:
        reason = f"dependency {cascade} restarts"
    elif obs.failed or obs.build_failed:
        reason = _changed_reason(changed, obs.spec, spec) + " after failure"
    else:
        reason = ""

    actions: list[Action] = []
    running = sorted(obs.replicas)
    keep = [i for i in running if i < spec.slots]
    for index in reversed([i for i in running if i >= spec.slots]):
        actions.append(Action(ActionKind.STOP, name, index, f"replicas {len(running)} -> {spec.slots}"))
    missing = [i for i in range(spec.slots) if i not in obs.replicas]

    if rebuild or new_revision or obs.build_failed:
        actions.extend(_deploy(spec, reason, [], ActionKind.START))
    stale = [i for i in keep if obs.replicas[i].stale]
    if reason:
        actions.extend(Action(ActionKind.RESTART, name, i, reason) for i in keep)
        restarting[name] = reason
    elif stale:
        why = next((w for i in stale if isinstance(w := obs.replicas[i].stale, str)),
                   "adopted, but started from another config")
        actions.extend(Action(ActionKind.RESTART, name, i, why) for i in stale)
        restarting[name] = why
    elif changed and changed != ("replicas",):
        settings = [f for f in changed if f != "replicas"]
        actions.append(Action(ActionKind.UPDATE, name, None, _changed_reason(settings, obs.spec, spec, "applied in place")))
    if missing:
        why = reason or (f"replicas {len(running)} -> {spec.slots}" if "replicas" in changed else "not running")
        actions.extend(Action(ActionKind.START, name, i, why) for i in missing)
    return actions


_HASH = re.compile(r"^[0-9a-f]{12,}$")


def same_revision(a: str | None, b: str | None) -> bool:
    """Revisions are equal when one is a prefix of the other, for hashes (commits and folder
    hashes: versions carry 12 digits of them); other revisions (package versions: ``1.0``
    and ``1.0.1``) only when equal."""
    if not a or not b:
        return False
    if a == b:
        return True
    if not (_HASH.match(a) and _HASH.match(b)):
        return False
    n = min(len(a), len(b))
    return a[:n] == b[:n]


_same_revision = same_revision  # the name the reconciler imports


def obs_revision(obs: ServiceObserved) -> str | None:
    """The source revision part of the running version (``REVISION-BUILDHASH``)."""
    return Version.parse(obs.version).revision if obs.version else None


def _deploy(spec: ServiceSpec, reason: str, indices: Iterable[int], kind: ActionKind) -> list[Action]:
    actions: list[Action] = []
    if spec.source.kind in ("git", "pip"):  # pip: resolve, and install into a new venv
        actions.append(Action(ActionKind.FETCH, spec.name, None, reason))
    if spec.source.kind == "path" and not spec.source.in_place:
        actions.append(Action(ActionKind.SNAPSHOT, spec.name, None, reason))
    if spec.source.kind == "image":
        actions.append(Action(ActionKind.PULL, spec.name, None, f"{reason} (image {spec.source.image})"))
    if spec.build:
        actions.append(Action(ActionKind.BUILD, spec.name, None, reason))
    if spec.image_build is not None:
        actions.append(Action(ActionKind.BUILD, spec.name, None, f"{reason} (image from {spec.image_build.dockerfile} "
                                                                  f"in {spec.image_build.context})"))
    actions.extend(Action(kind, spec.name, i, reason) for i in indices)
    return actions


def _changed_reason(fields: Iterable[str], old: ServiceSpec, new: ServiceSpec, verb: str = "changed") -> str:
    """``"command, env (PORT) changed"``: env names only, never values (they may be secrets)."""
    parts = []
    for field in fields:
        if field == "environment":
            keys = sorted(k for k in set(old.environment) | set(new.environment)
                          if old.environment.get(k) != new.environment.get(k))
            parts.append(f"env ({', '.join(keys)})")
        else:
            parts.append(field)
    return f"{', '.join(parts)} {verb}"
