"""Package sources: ``source = { pip = "REQUIREMENT", index = URL, extra_index = [URL...] }``.

pip itself resolves and installs (no resolver of ours): the *revision* of a pip source is the
version pip would install for the requirement now (``pip install --dry-run --report``, which
also honours pip's own configuration and environment, ``PIP_*`` and ``pip.conf``). Each version
is installed into its own virtual environment, ``STATE_DIR/sources/NAME/versions/VERSION/``,
beside the running one; a venv is complete once ``.supervise-installed`` is in it, so an
interrupted install is redone, never run. Replicas run with the venv's ``bin`` first on
``PATH`` (``command`` may name a console script of the package) and ``VIRTUAL_ENV`` set, as
``activate`` does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    from packaging.requirements import Requirement

# packaging (with ipaddress, platform, ...) is imported where it is used: a supervisor whose
# file has no pip source never needs it, and every module it loads stays in its memory.

from . import SourceError, prune_versions
from ...observe import safefs
from ...desired.model import SourceSpec

#: Seconds for resolving a requirement against the index.
RESOLVE_TIMEOUT = 300.0
#: The longest requirement accepted, in characters.
MAX_REQUIREMENT = 1000
#: The marker of a complete venv.
COMPLETE = ".supervise-installed"
#: What a version may look like to become a folder name (PEP 440 normalised versions fit).
_SAFE_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+!_-]{0,99}$")


def parse_requirement(text: str) -> Requirement:
    """A PEP 508 requirement (``name``, ``name>=1.0``, ``name[extra]~=2.1``), at most
    :data:`MAX_REQUIREMENT` characters. A URL
    requirement (``name @ https://…``) has no index to poll and is refused. Raises ValueError."""
    from packaging.requirements import InvalidRequirement, Requirement

    if len(text) > MAX_REQUIREMENT:
        raise ValueError(f"bad requirement: longer than {MAX_REQUIREMENT} characters")
    try:
        requirement = Requirement(text)
    except InvalidRequirement as exc:
        shown = repr(text) if len(text) <= 60 else repr(text[:60]) + "..."
        raise ValueError(f"bad requirement {shown}: {str(exc).splitlines()[0]}") from None
    if requirement.url:
        raise ValueError(f"requirement {requirement.name!r} names a URL: give a name and a version range")
    return requirement


def index_args(spec: SourceSpec) -> list[str]:
    """pip's options for the source's indexes (none: pip's own configuration decides)."""
    args = ["--index-url", spec.index] if spec.index else []
    for url in spec.extra_index:
        args += ["--extra-index-url", url]
    return args


def venv_env(venv: Path, env: Mapping[str, str]) -> dict[str, str]:
    """What ``activate`` sets: ``VIRTUAL_ENV`` and the venv's ``bin`` first on ``PATH``
    to be merged into a replica's environment ``env``."""
    path = env.get("PATH") or os.defpath
    return {"VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}{os.pathsep}{path}"}


class PipSource:
    """Resolve and install ``spec`` (a pip SourceSpec) under ``root``. Blocking: ``latest``
    runs pip as a child and waits (call it in a thread); ``install_steps`` gives the argv lists
    for the caller to run (the Preparer runs them like build steps, stoppable)."""

    def __init__(self, spec: SourceSpec, root: Path, python: str = sys.executable):
        assert spec.kind == "pip" and spec.requirement
        self.spec = spec
        self.requirement = parse_requirement(spec.requirement)
        self.root = root
        self.versions = root / "versions"
        self.python = python

    def latest(self) -> str:
        """The version pip would install for the requirement now. Raises SourceError with
        pip's last error line (nothing found, unreachable index, bad requirement)."""
        return self._resolve(deps=True)

    def latest_alone(self) -> str:
        """:meth:`latest`, resolving the package alone (``--no-deps``): its newest satisfying
        release, whatever its dependencies need. Raises SourceError."""
        return self._resolve(deps=False)

    def _resolve(self, deps: bool) -> str:
        # pip's report goes to its stdout (``--report -`` with ``--quiet``): no file is written
        # anywhere for a resolve, so nothing lands outside STATE_DIR.
        argv = [self.python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                *([] if deps else ["--no-deps"]),
                "--disable-pip-version-check", "--no-input", "--report", "-",
                *index_args(self.spec), "--", str(self.spec.requirement)]
        try:
            env = {**os.environ, "PIP_NO_INPUT": "1", **self.pip_env()}
        except OSError as exc:  # safefs.UnsafeStateDir: the source's folder is not ours
            raise SourceError(str(exc)) from None
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=RESOLVE_TIMEOUT,
                                    stdin=subprocess.DEVNULL, env=env)
        except subprocess.TimeoutExpired:
            raise SourceError(f"pip: no answer for {self.spec.requirement!r} in {RESOLVE_TIMEOUT:g}s") from None
        if result.returncode != 0:
            raise SourceError(f"pip cannot resolve {self.spec.requirement!r}: {_last_error(result.stderr)}")
        try:
            data = json.loads(result.stdout)
        except ValueError as exc:
            raise SourceError(f"pip gave no report for {self.spec.requirement!r}: {exc}") from None
        from packaging.utils import canonicalize_name

        wanted = canonicalize_name(self.requirement.name)
        for item in data.get("install") or []:
            metadata = item.get("metadata") or {}
            if canonicalize_name(str(metadata.get("name", ""))) == wanted:
                version = str(metadata.get("version", ""))
                if not _SAFE_VERSION.match(version):
                    raise SourceError(f"pip resolved {wanted} to an unusable version {version!r}")
                return version
        raise SourceError(f"pip resolved {self.spec.requirement!r} but did not list {wanted}")

    def pip_env(self) -> dict[str, str]:
        """``PIP_CACHE_DIR`` and ``TMPDIR`` for pip's runs: ``cache`` and ``tmp`` in the
        source's folder (made and checked through safefs), as ``[supervise] self`` does, so
        pip's cache and temporary files stay in STATE_DIR. Raises ``safefs.UnsafeStateDir``."""
        root = safefs.ensure_dirs(self.root.parent, self.root.name)
        return {"PIP_CACHE_DIR": str(safefs.ensure_dir(root / "cache")), "TMPDIR": str(safefs.ensure_dir(root / "tmp"))}

    def venv(self, version: str) -> Path:
        """The folder of ``version``'s virtual environment."""
        if not _SAFE_VERSION.match(version):
            raise SourceError(f"bad version {version!r}")
        return self.versions / version

    def installed(self, version: str) -> bool:
        """True when ``version``'s venv is complete: a real folder (not a symlink) holding the
        :data:`COMPLETE` marker as a regular file."""
        return venv_complete(self.venv(version))

    def install_steps(self, version: str) -> list[list[str]]:
        """The argv lists that make ``version``'s venv: a venv (no pip of its own: the
        supervisor's pip installs into it with ``--python``, pip >= 22.3), then the package
        pinned to ``version``. Any incomplete venv left there is removed first, and the venv's
        folder is made here, empty, through safefs (``sources``, ``NAME``, ``versions`` and the
        venv itself: real folders of ours, 0700), so ``python -m venv`` never writes through a
        symlink planted in STATE_DIR. Raises ``safefs.UnsafeStateDir`` (an OSError)."""
        venv = fresh_venv_folder(self.versions, self.venv(version))
        name = self.requirement.name + (f"[{','.join(sorted(self.requirement.extras))}]" if self.requirement.extras else "")
        return [
            [self.python, "-m", "venv", "--without-pip", str(venv)],
            [self.python, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
             "--disable-pip-version-check", "--no-input", *index_args(self.spec), "--", f"{name}=={version}"],
        ]

    def mark_installed(self, version: str) -> None:
        """Say ``version``'s venv is complete (safefs.write_atomic: never through a symlink)."""
        safefs.write_atomic(self.venv(version), COMPLETE, b"")

    def prune(self, keep: int, protect: set[str]) -> list[str]:
        """Remove venvs beyond the ``keep`` newest (by install time), never those whose
        version is in ``protect``. Returns the removed versions."""
        return prune_versions(self.versions, keep, protect)


def venv_complete(venv: Path) -> bool:
    """True when ``venv`` is a real folder (not a symlink) with :data:`COMPLETE` in it as a
    regular file."""
    try:
        return stat.S_ISDIR(os.lstat(venv).st_mode) and stat.S_ISREG(os.lstat(venv / COMPLETE).st_mode)
    except OSError:
        return False


def fresh_venv_folder(versions: Path, venv: Path) -> Path:
    """Make ``venv`` (a folder directly in ``versions``) empty and ready for ``python -m venv``:
    ``versions`` and its two parents are made or checked with safefs (real folders of ours,
    0700); whatever stands at ``venv`` (an incomplete venv, a file, a planted symlink) is removed,
    the entry itself, never what a symlink points to; then ``venv`` is made 0700. Shared by pip
    sources and ``[supervise] self``. Returns ``venv``. Raises ``safefs.UnsafeStateDir``."""
    assert venv.parent == versions
    safefs.ensure_dirs(versions.parent.parent, versions.parent.name, versions.name)
    try:
        st = os.lstat(venv)
    except FileNotFoundError:
        st = None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(venv, ignore_errors=True)  # rmtree never follows a symlink inside
        else:
            safefs.unlink_in(versions, venv.name)
    return safefs.ensure_dir(venv)


def _last_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors or lines or ["pip failed"])[-1].removeprefix("ERROR: ")
