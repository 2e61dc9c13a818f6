"""What versions of a service are on disk, which proved good, which runs; and the choice of a
version to roll back to (``supervise versions NAME``, ``supervise rollback NAME [VERSION]``).

A version is on disk when its folder is under ``STATE_DIR/sources/NAME/versions/``: a git
worktree (named by 12 digits of its commit), a folder snapshot (12 digits of its content hash)
or a pip venv (the package version). Each is listed with the version the current build step
makes of it (``REVISION12-BUILD8``, :func:`supervisor.execute.builds.make_version`); ``built`` says
whether that build ran there (always true without a build step).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

from .builds import Artifact, make_version, source_root
from ..decide.plan import same_revision
from ..desired.model import ServiceSpec, Version

#: Names a version folder may have (commit or hash prefixes, package versions).
_FOLDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+!_-]{0,99}$")
#: A pip venv is complete once this file is in it (sources/pip.py).
_PIP_COMPLETE = ".supervise-installed"


class VersionError(Exception):
    """No such version, or none that can be rolled back to; the message says why."""


def on_disk(state_dir: Path, spec: ServiceSpec) -> list[tuple[str, Path]]:
    """``(revision, folder)`` of every complete version folder of ``spec``, newest first (by
    mtime, the order pruning keeps). Names are checked before they become paths; symlinks and
    partial copies (dot names) are skipped."""
    folder = source_root(state_dir, spec.name) / "versions"
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    found = []
    for entry in entries:
        if not _FOLDER.match(entry.name) or not entry.is_dir(follow_symlinks=False):
            continue
        path = Path(entry.path)
        if spec.source.kind == "pip" and not (path / _PIP_COMPLETE).exists():
            continue
        try:
            found.append((entry.stat(follow_symlinks=False).st_mtime, entry.name, path))
        except OSError:
            continue
    return [(name, path) for _mtime, name, path in sorted(found, reverse=True)]


def built(state_dir: Path, spec: ServiceSpec, version: str) -> bool:
    """True when ``version`` needs no build step or its build succeeded on disk."""
    if not spec.build:
        return True
    marker = source_root(state_dir, spec.name) / "built" / version
    return _FOLDER.match(version) is not None and marker.is_file()


def listing(state_dir: Path, spec: ServiceSpec, running: Mapping[int, str], good: list[Artifact],
            pinned: str | None, newest: str | None) -> list[dict[str, Any]]:
    """The rows of ``supervise versions NAME --json``, newest on disk first, then good ones no
    longer on disk and running ones from no folder (a folder run in place, an adopted one):
    ``version``, ``revision``, ``folder`` (None when not on disk), ``built``, ``good``,
    ``running`` (replica indices), ``pinned``, ``newest`` (the newest revision the source
    showed). ``running`` maps replica index to the version it runs."""
    good_versions = {a.version for a in good}
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()

    def row(version: str, revision: str, folder: Path | None) -> None:
        seen.add(version)
        rows.append({"version": version, "revision": revision, "folder": str(folder) if folder else None,
                     "built": built(state_dir, spec, version) if folder else None,
                     "good": version in good_versions,
                     "running": sorted(i for i, v in running.items() if v == version),
                     "pinned": version == pinned, "newest": same_revision(newest, revision)})

    for revision, folder in on_disk(state_dir, spec):
        version = make_version(revision, spec)
        # a folder built with an older build step: the version that ran there, if known
        for known in [*running.values(), *good_versions]:
            if Version.parse(known).revision == Version.parse(version).revision and known not in seen:
                row(known, revision, folder)
        if version not in seen:
            row(version, revision, folder)
    for artifact in reversed(good):
        if artifact.version not in seen:
            row(artifact.version, artifact.revision, None)
    for version in dict.fromkeys(running.values()):
        if version not in seen:
            row(version, Version.parse(version).revision, None)
    return rows


def choose(state_dir: Path, spec: ServiceSpec, wanted: str | None, current: str | None,
           good: list[Artifact]) -> Artifact:
    """The artifact ``supervise rollback`` runs: ``wanted`` (a version, or a unique prefix of
    one or of its revision) or, when None, the newest good version other than ``current`` (what
    runs). Raises :class:`VersionError` when there is none, the prefix is ambiguous, or the
    version's folder is gone or was never built with the current build step."""
    if wanted is None:
        for artifact in reversed(good):
            if artifact.version != current:
                return _present(artifact)
        raise VersionError(f"{spec.name}: no good version other than {current or 'what runs'} to roll back to "
                           f"(see `supervise versions {spec.name}`)")
    candidates: dict[str, Artifact] = {}
    for artifact in good:
        candidates[artifact.version] = artifact
    for revision, folder in on_disk(state_dir, spec):
        version = make_version(revision, spec)
        candidates.setdefault(version, Artifact(workdir=folder, version=version, revision=revision))
    if wanted in candidates:
        matches = [candidates[wanted]]
    else:
        matches = [a for v, a in candidates.items() if v.startswith(wanted) or a.revision.startswith(wanted)]
    if not matches:
        raise VersionError(f"{spec.name}: no version {wanted!r} on disk (see `supervise versions {spec.name}`)")
    if len(matches) > 1:
        raise VersionError(f"{spec.name}: {wanted!r} names {len(matches)} versions: "
                           + ", ".join(sorted(a.version for a in matches)))
    artifact = matches[0]
    if artifact.version not in {a.version for a in good} and not built(state_dir, spec, artifact.version):
        raise VersionError(f"{spec.name}: {artifact.version} was never built with the current build step")
    return _present(artifact)


def _present(artifact: Artifact) -> Artifact:
    if not artifact.workdir.is_dir():
        raise VersionError(f"{artifact.version}: its folder {artifact.workdir} is no longer on disk")
    return artifact
