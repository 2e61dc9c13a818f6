"""Read-only views of the observed state: pure functions of :class:`~supervisor.desired.model.Observed`.

The status rows (``supervise status``, the control socket), the systemd STATUS line, the
dependency conditions and :meth:`Runtime.read` are all computed here from one snapshot, never
by walking controllers. Times are wall-clock seconds since the epoch.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Mapping

from ..desired.model import Condition, Observed, Phase, ServiceObserved, ServiceSpec

#: Phases in which a replica counts as up.
UP = (Phase.RUNNING, Phase.READY)


def reached(obs: ServiceObserved, condition: Condition) -> bool | None:
    """True when every wanted replica of ``obs`` meets ``condition`` (docker compose's
    ``depends_on`` conditions); None when it never will (failed on the start limit, build
    failed with nothing running, held, or a ``completed`` one exited non-zero); False otherwise."""
    wanted = obs.spec.replicas if obs.spec is not None else 0
    found = [obs.replicas.get(i) for i in range(wanted)]
    if obs.build_failed and not any(r is not None and r.running for r in found):
        return None
    if obs.held:
        return None
    if any(r is not None and r.phase is Phase.FAILED for r in found):
        return None
    replicas = [r for r in found if r is not None]
    if len(replicas) < len(found):
        return False
    if condition is Condition.COMPLETED:
        if any(r.phase is Phase.EXITED and r.last_exit is not None and not r.last_exit.success for r in replicas):
            return None
        return all(r.phase is Phase.EXITED and r.last_exit is not None and r.last_exit.success for r in replicas)
    if condition is Condition.READY:
        return all(r.ready and r.phase in UP for r in replicas)
    return all(r.phase in UP or (r.phase is Phase.EXITED and r.started_at is not None) for r in replicas)


#: The phase a status row shows for a replica whose state cannot be observed now (a cluster
#: out of reach): not a life-cycle phase, what is known of it (Kubernetes' ``Unknown``).
UNKNOWN = "unknown"


def status_rows(observed: Observed, names: Iterable[str], now: float,
                listed: Iterable[str] = ()) -> list[dict[str, Any]]:
    """One row per replica (one per service with none), for the services in ``names`` (all
    with none), as ``supervise status --json`` prints them; ``now`` gives the uptimes.

    The rollback rule of each service is in every row (README, "Rollback has a written rule"): ``good`` (the
    replica's version proved good; None in a row without a replica), ``good_rule`` (the rule in
    words), ``good_versions`` (oldest first), ``rollback_to`` (what a failing update goes back
    to, None: nothing yet), ``pinned`` (the version ``supervise rollback`` pinned) and
    ``in_place`` (a folder run in place: a failing config change goes back to the last good
    config, never to earlier files).

    ``listed``: the services the file names. One the engine has not taken up yet (before the
    first plan, or while a reload applies) gets a ``pending`` row, so a status taken right
    after start-up never reads as "all running" with nothing listed."""
    wanted_names = set(names)
    rows: list[dict[str, Any]] = []
    for name in listed:
        if name not in observed.services and (not wanted_names or name in wanted_names):
            rows.append({"service": name, "replica": None, "phase": Phase.PENDING.value, "pid": None,
                         "version": None, "uptime": None, "restarts": 0, "last_exit": None, "ready": False,
                         "held": False, "desired": None, "log_error": None, "message": "not started yet"})
    for name, obs in observed.services.items():
        if wanted_names and name not in wanted_names:
            continue
        desired = obs.spec.replicas if obs.spec is not None else 0
        progress = ""
        if obs.preparing and obs.preparing_since is not None:  # "building for 12s: compiling x.c"
            progress = f"{obs.preparing} for {max(0, round(now - obs.preparing_since))}s"
            progress += f": {obs.build_line}" if obs.build_line else ""
        rule = {"good_rule": obs.good_rule or None, "good_versions": list(obs.good_versions),
                "rollback_to": obs.rollback_to, "pinned": obs.pinned, "in_place": obs.in_place}
        if not obs.replicas:
            rows.append({**rule, "good": None, "service": name, "replica": None, "phase": obs.phase.value, "pid": None,
                         "version": obs.version, "uptime": None, "restarts": 0, "last_exit": None, "ready": False,
                         "held": obs.held, "desired": desired, "log_error": obs.log_error or None,
                         "message": "; ".join(filter(None, (progress, obs.message))) or ("replicas = 0" if not desired else "")})
        for index, replica in sorted(obs.replicas.items()):
            up = replica.phase in UP and replica.started_at is not None
            if replica.unknown:  # what it does cannot be seen now: not "running" (Kubernetes: Unknown)
                rows.append({
                    **rule, "good": replica.good, "service": name, "replica": index, "phase": UNKNOWN,
                    "pid": None, "version": replica.version, "uptime": None, "restarts": replica.restarts,
                    "last_exit": str(replica.last_exit) if replica.last_exit else None, "ready": False,
                    "held": obs.held, "desired": desired, "message": replica.unknown,
                    "log_error": obs.log_error or None})
                continue
            rows.append({
                **rule, "good": replica.good,
                "service": name, "replica": index, "phase": replica.phase.value, "pid": replica.pid,
                "version": replica.version,
                "uptime": round(now - replica.started_at, 3) if up and replica.started_at is not None else None,
                "restarts": replica.restarts,
                "last_exit": str(replica.last_exit) if replica.last_exit else None,
                "ready": replica.ready and replica.phase in UP,
                "held": obs.held, "desired": desired,
                "message": replica.message or "; ".join(filter(None, (progress, obs.message))) or obs.log_error,
                "log_error": obs.log_error or None,
            })
    return rows


def summarize(observed: Observed) -> str:
    """A one-line summary of every replica's phase, e.g. ``"12 running, 1 backoff"`` (the
    systemd STATUS line). Phases in life-cycle order; a service with no replica counts once
    in its own phase (``build-failed``, ``fetching``, ...). ``"no services"`` when there are none."""
    counts: Counter[Phase] = Counter()
    for obs in observed.services.values():
        if obs.replicas:
            counts.update(r.phase for r in obs.replicas.values())
        else:
            counts[obs.phase] += 1
    if not counts:
        return "no services"
    return ", ".join(f"{counts[p]} {p.value}" for p in Phase if counts[p])


def not_up(desired: Mapping[str, ServiceSpec], observed: Observed) -> tuple[list[str], list[str]]:
    """Services of ``desired`` that are not up, as ``"NAME (phase)"``, in two lists: those
    still on their way, and those that cannot get there now (failed, build failed, held). Up:
    every replica runs, and is ready where the service has a ``ready`` check."""
    waiting, stuck = [], []
    for name, spec in desired.items():
        obs = observed.services.get(name)
        condition = Condition.READY if spec.ready is not None else Condition.STARTED
        state = reached(obs, condition) if obs is not None else False
        if state is None and obs is not None:
            stuck.append(f"{name} ({obs.phase.value})")
        elif not state:
            waiting.append(f"{name} ({obs.phase.value if obs is not None else 'pending'})")
    return waiting, stuck
