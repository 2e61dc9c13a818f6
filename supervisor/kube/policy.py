"""What to do on the cluster (pure): desired manifests + observed objects + records + now.

:func:`decide` returns the actions of one converge pass; :mod:`.converge` carries them out.
The rules:

- **Apply** a desired object that is missing or whose applied spec differs (the spec hash
  annotation ``supervise/spec-hash`` tells; server-side apply, field manager ``supervise``).
- **Drift**: an object whose fields we set were changed by another field manager (its
  ``managedFields``) is reported and *not* applied over; the user decides (``plan`` shows it).
- **Rollout** of a Deployment: after an apply, wait until it is available (observedGeneration
  caught up, every replica updated and available: Kubernetes' own "complete" rule, as
  ``kubectl rollout status``). Then its spec is the service's *good* one.
- **Rollback**: a rollout that does not complete within ``progressDeadlineSeconds``
  (the Deployment condition ``Progressing=False, reason=ProgressDeadlineExceeded``, or our own
  clock when no controller says so: deadline + :data:`GRACE` seconds) is rolled back by
  re-applying the last good spec, and the failed spec is not applied again until the desired
  spec changes: the same rule as for local processes (ARCHITECTURE.md: a new version that never
  becomes ready is rolled back to the last good one). With no good spec yet it is reported
  ``failed`` and left as it is.
- **Delete** only objects we own: labelled ``app.kubernetes.io/managed-by: supervise`` *and*
  with ``supervise`` among their field managers; anything else is left alone.

:class:`Reachability` is the backoff of an unreachable cluster: retried with exponential
backoff (supervise's own :class:`~supervisor.decide.backoff.BackoffState`), reported once per outage.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Collection, Mapping, Sequence

from ..desired.model import Backoff
from . import fields
from .render import LABEL_MANAGED_BY, LABEL_NAME, LABEL_VERSION, MANAGED_BY

FIELD_MANAGER = "supervise"
HASH_ANNOTATION = "supervise/spec-hash"
#: On a Deployment: the last manifest that became available (JSON), and the spec hash rolled
#: back from. Kept on the object itself, not on this machine, so that a restarted supervise
#: rolls back as the one before would have, and nothing of the spec (env values included) is
#: written anywhere the cluster does not already hold it.
GOOD_ANNOTATION = "supervise/good-spec"
FAILED_ANNOTATION = "supervise/failed-hash"
OUR_ANNOTATIONS = (HASH_ANNOTATION, GOOD_ANNOTATION, FAILED_ANNOTATION)
#: Seconds past progressDeadlineSeconds after which our own clock calls a rollout failed when
#: the cluster has not said so (its controller sets the condition within a few seconds).
GRACE = 10.0
#: Kinds we render, in apply order.
KINDS = ("Service", "Deployment")

Key = tuple[str, str]  # (kind, name)


def key_of(obj: Mapping[str, Any]) -> Key:
    """``(kind, name)`` of a manifest or an object read back."""
    return obj["kind"], obj["metadata"]["name"]


def spec_hash(manifest: Mapping[str, Any]) -> str:
    """16 hex digits of the manifest as we would apply it (without our own annotations)."""
    clean = json.loads(json.dumps(manifest))
    annotations = clean.get("metadata", {}).get("annotations")
    if annotations is not None:
        for key in OUR_ANNOTATIONS:
            annotations.pop(key, None)
        if not annotations:
            clean["metadata"].pop("annotations")
    return hashlib.sha256(json.dumps(clean, sort_keys=True).encode()).hexdigest()[:16]


def stamped(manifest: Mapping[str, Any], record: "Record | None" = None) -> dict[str, Any]:
    """A copy of ``manifest`` carrying its spec hash annotation and, for a Deployment, the
    record's good spec and failed hash: what apply sends (server-side apply removes an
    annotation we stop sending, so each apply carries all of them)."""
    copy = json.loads(json.dumps(manifest))
    annotations = copy["metadata"].setdefault("annotations", {})
    annotations[HASH_ANNOTATION] = spec_hash(manifest)
    if record is not None and manifest.get("kind") == "Deployment":
        if record.good is not None:
            annotations[GOOD_ANNOTATION] = json.dumps(record.good, sort_keys=True, separators=(",", ":"))
        if record.failed:
            annotations[FAILED_ANNOTATION] = record.failed
    return copy


def remembered(obj: Mapping[str, Any] | None) -> "Record":
    """The good spec and failed hash an observed Deployment carries (an empty record if none)."""
    annotations = ((obj or {}).get("metadata", {}).get("annotations") or {})
    good = None
    if annotations.get(GOOD_ANNOTATION):
        try:
            good = json.loads(annotations[GOOD_ANNOTATION])
        except ValueError:
            good = None
    return Record(good=good, failed=annotations.get(FAILED_ANNOTATION) or None)


def applied_hash(obj: Mapping[str, Any] | None) -> str | None:
    """The spec hash an observed object was applied with (None: not by us, or never)."""
    if obj is None:
        return None
    return (obj.get("metadata", {}).get("annotations") or {}).get(HASH_ANNOTATION)


def version_of(obj: Mapping[str, Any] | None) -> str | None:
    """The ``app.kubernetes.io/version`` label of a manifest or object."""
    if obj is None:
        return None
    return (obj.get("metadata", {}).get("labels") or {}).get(LABEL_VERSION)


def owned(obj: Mapping[str, Any]) -> bool:
    """Ours to delete: our managed-by label and our field manager (both, never one alone)."""
    labelled = (obj.get("metadata", {}).get("labels") or {}).get(LABEL_MANAGED_BY) == MANAGED_BY
    return labelled and FIELD_MANAGER in fields.owners(obj)


def drift(desired: Mapping[str, Any], observed: Mapping[str, Any] | None) -> dict[str, list[str]]:
    """``{manager: [field, ...]}``: fields we set that another manager changed to another
    value (what a non-forced server-side apply would report as conflicts). Field names are
    dotted, e.g. ``spec.replicas``."""
    if observed is None:
        return {}
    wanted = fields.paths(desired)
    result: dict[str, list[str]] = {}
    for manager, leaves in fields.owners(observed).items():
        if manager == FIELD_MANAGER:
            continue
        for leaf in sorted(leaves):
            for path in wanted:
                if fields.overlaps(leaf, path) and fields.value_at(observed, path) != fields.value_at(desired, path):
                    result.setdefault(manager, []).append(_dotted(leaf))
                    break
    return result


def _dotted(path: fields.Path) -> str:
    return ".".join(p[2:] if p.startswith("f:") else "[" + p[2:] + "]" for p in path).replace(".[", "[")


# -- rollouts -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Record:
    """What we remember of one service's Deployment between passes.

    ``applied`` is the manifest last applied and ``applied_at`` when (seconds, the caller's
    clock); ``done`` once that rollout completed. ``good`` is the last manifest that became
    available; ``failed`` the spec hash rolled back from (not applied again until the desired
    spec changes).
    """

    applied: Mapping[str, Any] | None = None
    applied_at: float = 0.0
    done: bool = False
    good: Mapping[str, Any] | None = None
    failed: str | None = None

    @property
    def applied_hash(self) -> str | None:
        return spec_hash(self.applied) if self.applied is not None else None


@dataclass(frozen=True)
class Action:
    """One step of a pass. ``kind``: ``apply``, ``rollback`` (apply ``manifest``, the good
    spec), ``delete``, ``drift`` (report only), ``wait`` (a rollout in progress), ``available``
    (a rollout completed), ``failed`` (a rollout failed with nothing to roll back to), ``keep``
    (a failed spec not retried). ``target`` is ``(kind, name)``; ``reason`` says why, for
    ``plan`` and events."""

    kind: str
    target: Key
    reason: str
    manifest: Mapping[str, Any] | None = None
    service: str | None = None
    version: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """``plan``'s line: ``apply Deployment/api: reason``."""
        return f"{self.kind} {self.target[0]}/{self.target[1]}: {self.reason}"


def rollout_state(obj: Mapping[str, Any]) -> tuple[str, str]:
    """``(state, message)`` of an observed Deployment: ``complete``, ``progressing`` or
    ``failed``, by the rule of ``kubectl rollout status`` (observedGeneration caught up, all
    replicas updated and available) and the ``Progressing`` condition."""
    spec, status = obj.get("spec", {}), obj.get("status", {}) or {}
    generation = obj.get("metadata", {}).get("generation", 0)
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    progressing = conditions.get("Progressing", {})
    if status.get("observedGeneration", 0) < generation:  # conditions below are of an older spec
        return "progressing", "waiting for the controller to see the new spec"
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return "failed", progressing.get("message") or "progress deadline exceeded"
    want = spec.get("replicas", 1)
    updated, available = status.get("updatedReplicas", 0), status.get("availableReplicas", 0)
    total = status.get("replicas", 0)
    if updated < want:
        return "progressing", f"{updated} of {want} replicas updated"
    if total > updated:
        return "progressing", f"{total - updated} old replicas pending termination"
    if available < updated:
        return "progressing", f"{available} of {updated} updated replicas available"
    return "complete", f"{available} of {want} replicas available"


def decide(desired: Sequence[Mapping[str, Any]], observed: Sequence[Mapping[str, Any]],
           records: Mapping[str, Record], now: float, hold: Collection[str] = ()) -> list[Action]:
    """The actions of one pass, in order: applies (Services before Deployments, file order),
    rollout checks, then deletions. ``observed`` is every object carrying our managed-by label
    in the namespace (plus, where known, the desired names even without it); ``records`` is
    keyed by service name; ``now`` is seconds on the same clock as the records. ``hold`` names
    services still in the file that have no manifest this pass (their first image is not built
    yet, or its build failed): their objects are left as they are, never deleted."""
    seen = {key_of(obj): obj for obj in observed}
    wanted = {key_of(m): m for m in desired}
    actions: list[Action] = []
    for manifest in desired:
        target = key_of(manifest)
        name = manifest["metadata"]["labels"].get(LABEL_NAME, target[1])
        obj = seen.get(target)
        version = version_of(manifest)
        digest = spec_hash(manifest)
        conflicts = drift(manifest, obj)
        if conflicts:
            who = "; ".join(f"{m} changed {', '.join(f)}" for m, f in conflicts.items())
            actions.append(Action("drift", target, f"edited outside supervise ({who}); not overwritten",
                                  service=name, version=version, details={"managers": conflicts}))
            continue
        if target[0] != "Deployment":
            if applied_hash(obj) != digest:
                actions.append(Action("apply", target, "missing" if obj is None else "spec changed",
                                      manifest, name, version))
            continue
        record = records.get(name, Record())
        if record.failed == digest:
            actions.append(Action("keep", target, f"version {version or digest} was rolled back; not retried until "
                                  "the file or the source changes", service=name, version=version))
            actions.extend(_rollout(target, name, obj, record, now, after_rollback=True))
            continue
        if applied_hash(obj) != digest:
            actions.append(Action("apply", target, "missing" if obj is None else
                                  f"new version {version}" if version != version_of(obj) else "spec changed",
                                  manifest, name, version))
            continue
        actions.extend(_rollout(target, name, obj, record, now))
    for target, obj in seen.items():
        if target in wanted or target[0] not in KINDS or target[1] in hold:
            continue
        if owned(obj):
            actions.append(Action("delete", target, "no longer in the file", service=target[1],
                                  version=version_of(obj)))
    return actions


def _rollout(target: Key, name: str, obj: Mapping[str, Any] | None, record: Record, now: float,
             after_rollback: bool = False) -> list[Action]:
    if obj is None:
        return []
    version = version_of(obj)
    if record.done and record.applied_hash == applied_hash(obj):
        return []
    state, message = rollout_state(obj)
    if state == "complete":
        return [Action("available", target, message, service=name, version=version)]
    deadline = float(obj.get("spec", {}).get("progressDeadlineSeconds", 600))
    late = record.applied is not None and now - record.applied_at > deadline + GRACE
    if state == "failed" or late:
        reason = message if state == "failed" else f"not available {deadline:.0f}s after it was applied ({message})"
        good = record.good
        if after_rollback or good is None or spec_hash(good) == applied_hash(obj):
            return [Action("failed", target, f"rollout failed: {reason}; no good version to roll back to"
                           if not after_rollback else f"rollback did not become available: {reason}",
                           service=name, version=version)]
        return [Action("rollback", target, f"rollout of {version} failed: {reason}; back to {version_of(good)}",
                       good, name, version_of(good), details={"from": version, "reason": reason})]
    return [Action("wait", target, f"rolling out {version}: {message}", service=name, version=version)]


def advance(records: Mapping[str, Record], action: Action, now: float) -> dict[str, Record]:
    """The records after ``action`` was carried out at ``now`` (pure)."""
    result = dict(records)
    name = action.service or action.target[1]
    if action.target[0] != "Deployment":
        return result
    record = result.get(name, Record())
    if action.kind == "apply":  # a new spec: what failed before is forgotten (the file changed)
        record = replace(record, applied=action.manifest, applied_at=now, done=False, failed=None)
    elif action.kind == "rollback":
        failed = record.applied_hash
        record = replace(record, applied=action.manifest, applied_at=now, done=False, failed=failed)
    elif action.kind == "available":
        applied = record.applied
        if applied is None:  # learnt from the cluster (e.g. after a supervise restart)
            return result
        record = replace(record, done=True, good=applied)
    elif action.kind == "delete":
        result.pop(name, None)
        return result
    else:
        return result
    result[name] = record
    return result


def adopt(records: Mapping[str, Record], desired: Sequence[Mapping[str, Any]],
          observed: Sequence[Mapping[str, Any]], now: float) -> dict[str, Record]:
    """Records for Deployments found on the cluster with no record (a restarted supervise):
    the good spec and failed hash come from the object's annotations; one whose applied hash
    equals the desired spec counts as applied ``now`` (its deadline starts again)."""
    result = dict(records)
    seen = {key_of(obj): obj for obj in observed}
    for manifest in desired:
        target = key_of(manifest)
        name = manifest["metadata"]["labels"].get(LABEL_NAME, target[1])
        if target[0] != "Deployment" or name in result:
            continue
        obj = seen.get(target)
        if obj is None:
            continue
        record = remembered(obj)
        current = applied_hash(obj)
        if current == spec_hash(manifest):
            record = replace(record, applied=manifest, applied_at=now)
        elif record.good is not None and current == spec_hash(record.good):
            record = replace(record, applied=record.good, applied_at=now)
        result[name] = record
    return result


# -- an unreachable cluster ----------------------------------------------------------------

class Reachability:
    """Retry pacing of an unreachable cluster: a transient error, retried after 1 s, doubling
    to at most 60 s, with up to +20% jitter (as supervise paces restarts; client-go's
    reflectors back off the same way), reported once per outage.

    ``failed(now)`` returns ``(retry_at, report)``: ``report`` is True only for the first
    failure of an outage. ``succeeded()`` returns True when it ends an outage (report that
    once). Times are the caller's clock (seconds).
    """

    def __init__(self, backoff: Backoff = Backoff(initial=1.0, max=60.0), rng: Callable[[], float] = random.random):
        self.backoff = backoff
        self.rng = rng
        self.attempts = 0
        self.down_since: float | None = None
        self.retry_at = 0.0

    def failed(self, now: float) -> tuple[float, bool]:
        first = self.down_since is None
        if first:
            self.down_since = now
        delay = self.backoff.initial * 2.0 ** min(self.attempts, 64)
        self.attempts += 1
        self.retry_at = now + min(self.backoff.max, delay * (1 + 0.2 * self.rng()))
        return self.retry_at, first

    def succeeded(self) -> bool:
        was_down = self.down_since is not None
        self.down_since = None
        self.attempts = 0
        self.retry_at = 0.0
        return was_down

    def due(self, now: float) -> bool:
        """Whether a pass may talk to the cluster at ``now``."""
        return now >= self.retry_at
