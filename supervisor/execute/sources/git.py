"""Git sources with GitPython: one bare repository per service, one worktree per version.

Layout under ``STATE_DIR/sources/NAME/``: ``repo.git`` (bare, fetched into) and
``versions/COMMIT12/`` (a detached worktree per checked-out commit). A running version's folder
is never touched by a fetch: new commits get new folders, and old ones are pruned to the newest
``keep`` (the running one always kept).

Git never prompts (``GIT_TERMINAL_PROMPT=0``, no askpass) and every call has a timeout, so an
unreachable remote is an error, not a hang.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from . import SourceError, prune_versions
from .. import procs
from ...observe import safefs
from ...redaction import redact
from ...desired.model import SourceSpec


class _LazyGit:
    """GitPython, imported on first use (it replaces itself in this module's globals): with
    gitdb and smmap it adds ~5 MB to every supervisor, most of which run no git source."""

    def __getattr__(self, name: str):
        import git as module

        _register_spawns(module)
        globals()["git"] = module
        return getattr(module, name)


def _register_spawns(module: Any) -> None:
    """Route GitPython's process starts through :func:`procs.popen_git`, so that the daemon's
    reaper can tell a git command GitPython waits for from an orphaned remote helper it must
    reap itself (else one ``[git] <defunct>`` per failed fetch piles up)."""
    cmd = module.cmd
    if not getattr(cmd.safer_popen, "_supervise", False):
        wrapped = functools.partial(procs.popen_git, cmd.safer_popen)
        wrapped._supervise = True  # type: ignore[attr-defined]
        cmd.safer_popen = wrapped


if TYPE_CHECKING:
    import git
else:
    git = _LazyGit()

GIT_TIMEOUT = 120.0  # seconds for any one git command
_SHA = re.compile(r"^[0-9a-f]{7,40}$")
#: GIT_MARK marks our git commands, so a stopping supervisor kills those (procs.kill_git_children)
#: and never a git process a host program (the library's user) runs itself. Its value is the
#: source's folder (``STATE_DIR/sources/NAME``): a stop or a removal kills that service's git only.
GIT_MARK = "SUPERVISE_GIT"
_ENV = {GIT_MARK: "1", "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "SSH_ASKPASS": "true",
        "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o ConnectTimeout=20"}


#: The credential helper that hands git a URL's ``user:password`` from its environment, so
#: the secret is never in any process's argv (``ps`` shows argv to every local user; a
#: process's environment only to its owner). git runs it as ``sh -c 'HELPER get'``
#: (gitcredentials(7)); printf is the shell's builtin, so no further argv holds it either.
_HELPER = ('!f() { test "$1" = get || exit 0; printf "username=%s\\n" "$SUPERVISE_GIT_USERNAME"; '
           'test -z "$SUPERVISE_GIT_PASSWORD" || printf "password=%s\\n" "$SUPERVISE_GIT_PASSWORD"; }; f')


def split_credentials(url: str) -> tuple[str, dict[str, str]]:
    """``(url without its user:password@, the git environment that supplies them)`` for an
    http(s) URL with credentials; ``(url, {})`` otherwise (ssh's ``git@`` names a login, not
    a secret, and ssh asks no credential helper). The helper list is reset first (an empty
    ``credential.helper``), so only ours answers; config through ``GIT_CONFIG_COUNT``/
    ``GIT_CONFIG_KEY_n``/``GIT_CONFIG_VALUE_n`` (git >= 2.31, git-config(1)). Userinfo is
    percent-decoded, as git does with a URL's own."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return url, {}
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    clean = urllib.parse.urlunsplit(parts._replace(netloc=host))
    return clean, {"GIT_CONFIG_COUNT": "2", "GIT_CONFIG_KEY_0": "credential.helper", "GIT_CONFIG_VALUE_0": "",
                   "GIT_CONFIG_KEY_1": "credential.helper", "GIT_CONFIG_VALUE_1": _HELPER,
                   "SUPERVISE_GIT_USERNAME": urllib.parse.unquote(user),
                   "SUPERVISE_GIT_PASSWORD": urllib.parse.unquote(password)}


class GitSource:
    """Fetch and check out ``spec`` (a git SourceSpec) under ``root``. Blocking: run in a thread.

    Credentials in the URL (``https://user:token@host/...``) never reach a command line: git
    gets the URL without them and asks them of a credential helper that reads them from its
    environment (:func:`split_credentials`)."""

    def __init__(self, spec: SourceSpec, root: Path):
        assert spec.kind == "git" and spec.url
        self.spec = spec
        self.url, self._credentials = split_credentials(spec.url)
        self.shown = redact(spec.url)  # what messages name: https://***@host/...
        self.root = root
        self.versions = root / "versions"

    @contextlib.contextmanager
    def _repo(self) -> Iterator[git.Repo]:
        """The bare repository, closed after use (GitPython keeps ``git cat-file`` helpers
        running per Repo object until it is closed)."""
        repo = self._open()
        try:
            yield repo
        finally:
            repo.close()

    def _open(self) -> git.Repo:
        path = self.root / "repo.git"
        try:
            # the source's folder is a real folder of ours (0700), and repo.git in it is not a
            # symlink: a planted one would make every fetch write into someone else's repository
            safefs.ensure_dirs(self.root.parent, self.root.name)
            if path.is_symlink():
                raise safefs.UnsafeStateDir(f"{path} is a symlink; refusing to follow it (remove it)")
            if path.exists():
                repo = git.Repo(path)
            else:
                repo = git.Repo.init(path, bare=True)
        except (git.GitError, OSError) as exc:
            raise SourceError(f"cannot open {path}: {exc}") from None
        repo.git.update_environment(**{**_ENV, GIT_MARK: str(self.root), **self._credentials})
        return repo

    def remote_revision(self) -> str:
        """The commit ``ref`` points to on the remote now (``git ls-remote``), without fetching.

        A ref that looks like a commit id is returned as is. Raises SourceError.
        """
        ref = self.spec.ref
        if _SHA.match(ref):
            return ref
        try:
            with self._repo() as repo:
                out = repo.git.ls_remote(self.url, ref, kill_after_timeout=GIT_TIMEOUT)
        except git.GitCommandError as exc:
            raise SourceError(f"cannot reach {self.shown}: {_stderr(exc)}") from None
        candidates = {}
        for line in str(out).splitlines():
            sha, name = line.split("\t", 1)
            candidates[name] = sha
        for name in (ref, f"refs/heads/{ref}", f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}"):
            if name in candidates:
                return candidates[name]
        raise SourceError(f"ref {ref!r} not found in {self.shown}")

    def fetch(self) -> str:
        """Fetch ``ref`` and return its full commit id. Raises SourceError."""
        with self._repo() as repo:
            return self._fetch(repo, self.spec.ref)

    def _fetch(self, repo: git.Repo, ref: str) -> str:
        try:
            repo.git.fetch("--force", "--no-tags", "--", self.url, ref, kill_after_timeout=GIT_TIMEOUT)
            return repo.git.rev_parse("FETCH_HEAD^{commit}")
        except git.GitCommandError as exc:
            if not _SHA.match(ref):
                raise SourceError(f"cannot fetch {ref!r} from {self.shown}: {_stderr(exc)}") from None
        try:  # a commit id the server will not hand out by itself: fetch everything, look it up
            repo.git.fetch("--force", "--tags", "--", self.url, "+refs/heads/*:refs/remotes/origin/*",
                           kill_after_timeout=GIT_TIMEOUT)
            return repo.git.rev_parse(f"{ref}^{{commit}}")
        except git.GitCommandError as exc:
            raise SourceError(f"cannot fetch commit {ref} from {self.shown}: {_stderr(exc)}") from None

    def is_ancestor(self, old: str, new: str) -> bool:
        """True when ``old`` is an ancestor of ``new`` (a fast-forward); False after a force
        push. ``git merge-base --is-ancestor`` says "no" with status 1 only (GitPython's
        ``Repo.is_ancestor`` rule); any other failure (a timeout, ``old`` no longer in the
        repository) raises :class:`SourceError`, so it is never taken for a force push."""
        with self._repo() as repo:
            try:
                repo.git.merge_base("--is-ancestor", old, new, kill_after_timeout=GIT_TIMEOUT)
                return True
            except git.GitCommandError as exc:
                if exc.status == 1:
                    return False
                raise SourceError(f"cannot tell whether {old[:12]} is an ancestor of {new[:12]}: "
                                  f"{_stderr(exc)}") from None

    def checkout(self, commit: str) -> Path:
        """A worktree of ``commit`` at ``versions/COMMIT12`` (reused when it exists)."""
        if not _SHA.match(commit):  # names are checked before they become paths
            raise SourceError(f"bad commit id {commit[:40]!r}")
        path = self.versions / commit[:12]
        # the folders first (real folders of ours, 0700), then what is in them: a symlink
        # planted as versions/ or as the version's folder is never followed
        safefs.ensure_dirs(self.root, "versions")
        if path.is_dir() and not path.is_symlink() and (path / ".git").exists():
            return path
        if path.is_symlink() or not path.is_dir():
            safefs.unlink_in(self.versions, path.name)
        else:
            shutil.rmtree(path, ignore_errors=True)
        with self._repo() as repo:
            try:
                repo.git.worktree("prune")
                repo.git.worktree("add", "--detach", "--force", str(path), commit, kill_after_timeout=GIT_TIMEOUT)
            except git.GitCommandError as exc:
                raise SourceError(f"cannot check out {commit[:12]}: {_stderr(exc)}") from None
        return path

    def prune(self, keep: int, protect: set[str]) -> list[str]:
        """Remove version folders beyond the ``keep`` newest, never those in ``protect``
        (12-digit commit prefixes). Returns the removed prefixes."""
        removed = prune_versions(self.versions, keep, protect)
        if removed:
            with self._repo() as repo:
                try:
                    repo.git.worktree("prune")
                except git.GitCommandError:
                    pass
        return removed


def _stderr(exc: git.GitCommandError) -> str:
    text = (exc.stderr or str(exc)).strip()
    text = re.sub(r"^stderr: ", "", text).strip().strip("'").strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return redact(lines[-1] if lines else "git failed")


def environment() -> dict[str, str]:
    """The git environment used for every call (no prompts)."""
    return {**os.environ, **_ENV}
