"""Files in STATE_DIR, opened so that nobody else can redirect them (issue 10, "root follows
paths a service user controls").

Rules, for a supervisor that may run as root beside services that run as other users:

- STATE_DIR and every folder of ours in it is a real directory (not a symlink), owned by our
  effective uid, and not writable by group or others (0700 when we create it). Anything else is
  refused with :class:`UnsafeStateDir`, whose message says what is wrong and how to fix it: a
  STATE_DIR made in advance by another user is never used as is.
- STATE_DIR is never inside a tree that a ``user =`` service can write: if that user owns, or
  may rename entries in, any folder from ``/`` down to STATE_DIR, it could move STATE_DIR away
  and plant its own. We refuse (see :func:`check_not_writable_by`), as OpenSSH's
  ``StrictModes`` refuses a home folder writable by others; we do not relocate silently.
- Every file is opened relative to a folder fd (``openat``) with ``O_NOFOLLOW``; new files are
  created with ``O_EXCL`` under random temporary names and renamed into place, so a planted
  symlink or hard link is never written through, truncated or chmod'ed.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from pathlib import Path

#: Largest state record we read (bytes): a bigger file is not ours.
MAX_RECORD = 1 << 20


class UnsafeStateDir(OSError):
    """STATE_DIR (or a folder in it) could be controlled by someone else; the message says why.
    An OSError, so that every caller that handles a failing file handles this too."""


def _describe_owner(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def check_own_dir(path: Path, st: os.stat_result | None = None) -> None:
    """Raise :class:`UnsafeStateDir` unless ``path`` is a real directory owned by our euid and
    not writable by group or others."""
    if st is None:
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise UnsafeStateDir(f"state dir {path}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeStateDir(f"state dir {path} is a symlink; refusing to follow it (point state_dir at the real folder)")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeStateDir(f"state dir {path} is not a directory")
    if st.st_uid != os.geteuid():
        raise UnsafeStateDir(f"state dir {path} belongs to {_describe_owner(st.st_uid)}, not to us "
                             f"({_describe_owner(os.geteuid())}); refusing to use it: remove it or choose another state_dir")
    if st.st_mode & 0o022:
        who = " and ".join(w for w, bit in (("group", 0o020), ("others", 0o002)) if st.st_mode & bit)
        raise UnsafeStateDir(f"state dir {path} is writable by {who} "
                             f"(mode {stat.S_IMODE(st.st_mode):04o}); refusing to use it: chmod 700 it")


def ensure_dir(path: Path) -> Path:
    """Create ``path`` (0700) if missing, then check it with :func:`check_own_dir` and make it
    0700. Missing parents are created with the usual 0755 (they are not ours to lock down).
    Returns ``path``. Raises :class:`UnsafeStateDir`."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    except OSError as exc:
        raise UnsafeStateDir(f"cannot create state dir {path}: {exc.strerror}") from None
    check_own_dir(path)
    if stat.S_IMODE(os.lstat(path).st_mode) != 0o700:
        os.chmod(path, 0o700, follow_symlinks=False)
    return path


def ensure_dirs(top: Path, *names: str) -> Path:
    """:func:`ensure_dir` on ``top``, then on each of ``names`` in turn below it (``top/a``,
    ``top/a/b``, ...): every folder of the chain is a real folder of ours, 0700, so nothing below
    ``top`` is reached through a planted symlink. Returns the last folder. Raises
    :class:`UnsafeStateDir`."""
    folder = ensure_dir(top)
    for name in names:
        folder = ensure_dir(folder / name)
    return folder


def open_dir(path: Path) -> int:
    """An fd on the folder ``path`` (not followed if it is a symlink), checked with
    :func:`check_own_dir`. The caller closes it. Raises :class:`UnsafeStateDir`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise UnsafeStateDir(f"state dir {path}: {exc.strerror}") from None
    try:
        check_own_dir(path, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    return fd


def writable_by(st: os.stat_result, uid: int, gids: set[int]) -> bool:
    """True when the user ``uid`` (in groups ``gids``) may create, remove or rename entries in
    the folder ``st`` describes (the owner may always chmod it; a sticky folder lets others
    only remove their own entries, so ours there are safe)."""
    if uid == 0:
        return True
    if st.st_uid == uid:
        return True
    if st.st_mode & stat.S_ISVTX:
        return False
    if st.st_mode & 0o002:
        return True
    return bool(st.st_mode & 0o020) and st.st_gid in gids


def user_ids(user: str) -> tuple[int, set[int]]:
    """(uid, every gid) of ``user`` (a name or a number). Raises KeyError when unknown."""
    entry = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
    try:
        gids = set(os.getgrouplist(entry.pw_name, entry.pw_gid))
    except OSError:
        gids = {entry.pw_gid}
    return entry.pw_uid, gids


def check_not_writable_by(state_dir: Path, user: str) -> None:
    """Raise :class:`UnsafeStateDir` when ``user`` could write any folder from ``/`` down to
    ``state_dir`` (and so rename our STATE_DIR away and plant its own). Our own uid is always
    fine; an unknown user is left to the spawn to report."""
    try:
        uid, gids = user_ids(user)
    except (KeyError, ValueError, OverflowError):
        return
    if uid == os.geteuid():
        return
    path = Path(os.path.realpath(state_dir))
    for folder in [path, *path.parents]:
        try:
            st = os.stat(folder)
        except OSError:
            continue
        if writable_by(st, uid, gids):
            try:
                group = grp.getgrgid(st.st_gid).gr_name
            except KeyError:
                group = str(st.st_gid)
            raise UnsafeStateDir(
                f"state dir {path} is inside {folder} (owner {_describe_owner(st.st_uid)}, group {group}, "
                f"mode {stat.S_IMODE(st.st_mode):04o}), which user {user!r} can write: a service running as "
                f"{user!r} could replace the state dir. Set [supervise] state_dir to a folder only "
                f"{_describe_owner(os.geteuid())} can write (e.g. /var/lib/supervise/NAME)")


class UntrustedConfig(OSError):
    """A file that says what root runs (services.toml, an ``env_file``) could be changed by a
    user other than root; the message says who and how to fix it."""


def _others_can_change(st: os.stat_result, is_dir: bool) -> str:
    """Why a user other than root and us could change (a file) or swap entries in (a folder)
    what ``st`` describes; "" when nobody else can. A sticky folder (``/tmp``) lets others
    remove only their own entries, so root's entries in it are safe (the kernel's rule, as
    OpenSSH's ``StrictModes`` and sudo's sudoers check take it)."""
    if st.st_uid not in (0, os.geteuid()):
        return f"belongs to {_describe_owner(st.st_uid)}"
    if is_dir and st.st_mode & stat.S_ISVTX:
        return ""
    if st.st_mode & 0o002:
        return f"is writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
    if st.st_mode & 0o020 and st.st_gid != 0:
        try:
            group = grp.getgrgid(st.st_gid).gr_name
        except KeyError:
            group = str(st.st_gid)
        return f"is writable by group {group} (mode {stat.S_IMODE(st.st_mode):04o})"
    return ""


def check_trusted_file(path: Path, what: str = "config file") -> None:
    """Raise :class:`UntrustedConfig` when a supervisor running as root reads ``path`` (a file
    that says what root runs) although a user other than root could change it: the file, or any
    folder from ``/`` down to it (both the path as given and the one its symlinks resolve to),
    belongs to another user or is writable by a group or others (a sticky folder such as
    ``/tmp`` is fine for root's own entries). Any user who could edit it could run anything as
    root: a service running as ``user = "nobody"`` in that folder could add a service of its
    own. Does nothing when we are not root (we can only run things as ourselves) or when
    ``path`` does not exist (the caller reports that)."""
    if os.geteuid() != 0:
        return
    given = Path(os.path.abspath(path))
    real = Path(os.path.realpath(path))
    try:
        st = os.stat(real)
    except OSError:
        return
    why = _others_can_change(st, is_dir=False)
    if why:
        raise UntrustedConfig(f"{what} {real} {why}: any user who can change it could run anything as root. "
                              f"Make it root's only (chown root {real}; chmod go-w {real})")
    for folder in dict.fromkeys([*given.parents, *real.parents]):  # each folder once, in order
        try:
            st = os.stat(folder)
        except OSError:
            continue
        why = _others_can_change(st, is_dir=True)
        if why:
            raise UntrustedConfig(f"{what} {given} is inside {folder}, which {why}: a user who can write "
                                  f"there could replace the file and run anything as root. Keep it in a "
                                  f"folder only root can write (e.g. /etc/supervise/)")


def write_atomic(folder: Path, name: str, data: bytes, mode: int = 0o600) -> None:
    """Write ``folder/name`` atomically: a new file with a random name (``O_EXCL``, never a
    symlink followed), then a rename over ``name`` inside the same folder fd."""
    dfd = open_dir(folder)
    try:
        tmp = f".{name}.{os.urandom(6).hex()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise
    finally:
        os.close(dfd)


def read_regular(folder: Path, name: str, limit: int = MAX_RECORD) -> bytes:
    """The content of ``folder/name`` if it is a regular file of ours (not a symlink, not a
    FIFO, at most ``limit`` bytes). Raises OSError otherwise."""
    dfd = open_dir(folder) if not isinstance(folder, int) else folder
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
    finally:
        if not isinstance(folder, int):
            os.close(dfd)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_size > limit:
            raise OSError(errno.EPERM, f"{name}: not a regular file of ours")
        return f.read(limit + 1)[:limit]


def unlink_in(folder: Path, name: str) -> None:
    """Remove ``folder/name`` (the entry itself, never what a symlink points to); missing is fine."""
    try:
        dfd = open_dir(folder)
    except UnsafeStateDir:
        return
    try:
        os.unlink(name, dir_fd=dfd)
    except FileNotFoundError:
        pass
    finally:
        os.close(dfd)


def is_inside(path: Path, folder: Path) -> bool:
    """True when ``path``, symlinks resolved, is directly inside ``folder`` (resolved)."""
    real = Path(os.path.realpath(path))
    return real.parent == Path(os.path.realpath(folder)) and real.name == path.name
