"""One converge pass on a cluster: observe -> :func:`policy.decide` -> act -> events.

:class:`Converger` is what an executor (the engine's seam) or a loop calls with the desired
manifests (from :func:`supervisor.kube.render.render`). It keeps the rollout records between
passes, paces an unreachable cluster (reported once per outage, retried with backoff) and
publishes supervise events: ``create``/``update`` (applied), ``ready`` (a rollout became
available), ``rolled-back``, ``failed``, ``delete``, ``drift``, ``cluster-unreachable`` and
``cluster-reachable``. The clock is injected (seconds; ``time.monotonic`` by default), so the
rollout deadlines are tested without waiting.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Collection, Mapping, Sequence

from ..observe.events import EventType, Notifier
from . import policy
from .cluster import ApplyConflict, Cluster, ClusterError, ClusterUnreachable

log = logging.getLogger("supervise")


class Converger:
    """Keeps one namespace converged to a list of manifests. Not thread-safe: one caller."""

    def __init__(self, cluster: Cluster, notifier: Notifier | None = None,
                 clock: Callable[[], float] = time.monotonic, reachability: policy.Reachability | None = None):
        self.cluster = cluster
        self.notifier = notifier or Notifier()
        self.clock = clock
        self.records: dict[str, policy.Record] = {}
        self.reachability = reachability or policy.Reachability()
        self._reported: dict[tuple[str, policy.Key], str] = {}
        #: Our objects as the last pass observed them (before its actions).
        self.observed: list[dict[str, Any]] = []

    # -- reading ----------------------------------------------------------------------------

    def plan(self, desired: Sequence[Mapping[str, Any]], hold: Collection[str] = ()) -> list[policy.Action]:
        """What a pass would do now, touching nothing (for ``supervise plan``): each apply is
        also sent as a server-side dry run (``dryRun=All``), so a conflict with a field manager
        we cannot see (an object of that name that is not ours) shows as drift. Raises
        :class:`ClusterError` (or :class:`ClusterUnreachable`)."""
        now = self.clock()
        observed = self.cluster.owned()
        records = policy.adopt(self.records, desired, observed, now)
        actions = policy.decide(desired, observed, records, now, hold)
        result = []
        for action in actions:
            if action.kind in ("apply", "rollback") and action.manifest is not None:
                name = action.service or action.target[1]
                try:
                    self.cluster.apply(policy.stamped(action.manifest, records.get(name)), dry_run=True)
                except ApplyConflict as exc:
                    action = policy.Action("drift", action.target, f"{exc}; not overwritten", service=action.service,
                                           version=action.version)
            result.append(action)
        return result

    # -- acting -----------------------------------------------------------------------------

    def step(self, desired: Sequence[Mapping[str, Any]], hold: Collection[str] = ()) -> list[policy.Action]:
        """One pass: the actions carried out (or reported). An unreachable cluster raises
        nothing: the pass is skipped until the backoff says to retry, and the outage is
        reported once (``cluster-unreachable``) and its end once (``cluster-reachable``).
        ``hold``: services in the file without manifests this pass (see :func:`policy.decide`)."""
        now = self.clock()
        if not self.reachability.due(now):
            return []
        try:
            observed = self.observed = self.cluster.owned()
            self.records = policy.adopt(self.records, desired, observed, now)
            actions = policy.decide(desired, observed, self.records, now, hold)
            for action in actions:
                self._act(action, now)
        except ClusterUnreachable as exc:
            retry_at, first = self.reachability.failed(now)
            if first:
                log.warning("kubernetes: %s (retrying with backoff)", exc)
                self.notifier.emit(EventType.CLUSTER_UNREACHABLE, error=str(exc))
            return []
        if self.reachability.succeeded():
            self.notifier.emit(EventType.CLUSTER_REACHABLE)
        return actions

    def run(self, desired: Callable[[], Sequence[Mapping[str, Any]]], stop, interval: float = 5.0,
            hold: Callable[[], Collection[str]] = lambda: (), wake=None) -> None:
        """Pass after pass until ``stop`` (a ``threading.Event``) is set; ``desired()`` is
        asked anew each pass (a reloaded file applies at the next one), then ``hold()``. A
        pass comes every ``interval`` seconds, or as soon as ``wake`` (a ``threading.Event``
        set by a watch, and by whoever sets ``stop``) is set."""
        while not stop.is_set():
            wanted = desired()
            self.step(wanted, hold())
            wait = interval
            if self.reachability.retry_at:
                wait = max(0.0, min(interval, self.reachability.retry_at - self.clock()))
            (wake or stop).wait(wait or interval)
            if wake is not None:
                wake.clear()

    def _act(self, action: policy.Action, now: float) -> None:
        kind, service, version = action.kind, action.service, action.version
        name = service or action.target[1]
        if kind in ("apply", "rollback"):
            assert action.manifest is not None
            after = policy.advance(self.records, action, now)
            try:  # the record after the action rides on the object: a restart keeps it
                self.cluster.apply(policy.stamped(action.manifest, after.get(name)))
            except ApplyConflict as exc:  # a manager we could not see from managedFields
                self._report(action, EventType.DRIFT, f"not applied: {exc}")
                return
            except ClusterUnreachable:
                raise
            except ClusterError as exc:
                self._report(action, EventType.FAILED, f"apply refused: {exc}")
                return
            self.records = after
            if kind == "rollback":
                log.warning("kubernetes: %s %s", action.target[1], action.reason)
                self.notifier.emit(EventType.ROLLED_BACK, service, version, kind=action.target[0],
                                   reason=action.reason, **{"from": action.details.get("from")})
            else:
                created = action.reason == "missing"
                self.notifier.emit(EventType.CREATE if created else EventType.UPDATE, service, version,
                                   kind=action.target[0], reason=action.reason)
            self._reported.pop((service or "", action.target), None)
        elif kind == "delete":
            self.cluster.delete(*action.target)
            self.records = policy.advance(self.records, action, now)
            self.notifier.emit(EventType.DELETE, service, version, kind=action.target[0], reason=action.reason)
        elif kind == "available":
            before = self.records.get(name)
            after = policy.advance(self.records, action, now)
            record = after.get(name)
            if record is not None and record.applied is not None and (before is None or before.good != record.good):
                try:  # remember the new good spec on the Deployment (metadata only: no rollout)
                    self.cluster.apply(policy.stamped(record.applied, record))
                except ApplyConflict as exc:
                    self._report(action, EventType.DRIFT, f"not applied: {exc}")
                    return
            self.records = after
            self._report(action, EventType.READY, action.reason)
        elif kind == "failed":
            self._report(action, EventType.FAILED, action.reason)
        elif kind == "drift":
            self._report(action, EventType.DRIFT, action.reason, managers=dict(action.details.get("managers", {})))

    def _report(self, action: policy.Action, type_: EventType, message: str, **data: Any) -> None:
        """Emit once per (service, object) until what is reported changes."""
        key = (action.service or "", action.target)
        text = f"{type_.value}:{message}"
        if self._reported.get(key) == text:
            return
        self._reported[key] = text
        if type_ in (EventType.DRIFT, EventType.FAILED):
            log.warning("kubernetes: %s/%s: %s", action.target[0], action.target[1], message)
        self.notifier.emit(type_, action.service, action.version, kind=action.target[0], reason=message, **data)
