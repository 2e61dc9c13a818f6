"""Telling systemd how we are: the ``sd_notify(3)`` protocol and what a run reports through it.

:class:`SdNotify` speaks the protocol: one ``KEY=VALUE`` line per field, one datagram per
message, sent to the ``AF_UNIX``/``SOCK_DGRAM`` socket named by ``$NOTIFY_SOCKET`` (a path, or
an abstract address written with a leading ``@``). Without ``$NOTIFY_SOCKET`` every call is a
no-op, so the same code runs under systemd, in a terminal and in tests.

:class:`UnitReporter` is what ``supervise run`` tells systemd (``Type=notify``): ``READY=1``
once the first apply has converged, a one-line ``STATUS=`` kept current, ``RELOADING=1``/
``READY=1`` around a reload, ``STOPPING=1`` at shutdown and ``WATCHDOG=1`` from the event loop.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import socket
import time
from typing import IO, TYPE_CHECKING, Awaitable, Callable, MutableMapping

from . import views

if TYPE_CHECKING:  # pragma: no cover
    from ..reconciler import Reconciler

log = logging.getLogger("supervise")

#: Variables that describe *our* unit; removed from the environment our services inherit.
UNIT_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class SdNotify:
    """A client of systemd's notification socket (``sd_notify(3)``; no libsystemd needed).

    ``address`` is ``$NOTIFY_SOCKET`` as systemd sets it (``/run/...`` or ``@abstract``), or
    None to disable. ``watchdog_usec`` and ``watchdog_pid`` are ``$WATCHDOG_USEC`` and
    ``$WATCHDOG_PID``. Sending never raises: a failure is logged once at debug level and the
    call returns False.
    """

    def __init__(self, address: str | None, watchdog_usec: str | None = None, watchdog_pid: str | None = None):
        self.address = address or None
        self._watchdog_usec = watchdog_usec
        self._watchdog_pid = watchdog_pid
        self._warned = False

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None, unset: bool = False) -> "SdNotify":
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` from ``environ``
        (default ``os.environ``); with ``unset``, remove them so children do not inherit them
        (like ``sd_notify(unset_environment=1)``)."""
        env = os.environ if environ is None else environ
        notifier = cls(env.get("NOTIFY_SOCKET"), env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID"))
        if unset:
            for name in UNIT_VARIABLES:
                env.pop(name, None)
        return notifier

    @property
    def enabled(self) -> bool:
        """True when there is a socket to talk to."""
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send ``fields`` (``"KEY=VALUE"`` strings) as one message; True if it was sent."""
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(fields).encode("utf-8", "replace"), target)
            return True
        except OSError as exc:
            if not self._warned:
                log.debug("cannot notify systemd at %s: %s", self.address, exc)
                self._warned = True
            return False

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: start-up (or a reload) is finished; optionally with a new status."""
        return self.send("READY=1", *(() if status is None else (_status_field(status),)))

    def status(self, text: str) -> bool:
        """``STATUS=text``, shown by ``systemctl status``; newlines become spaces."""
        return self.send(_status_field(text))

    def reloading(self) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC`` (CLOCK_MONOTONIC, microseconds), as
        systemd >= 253 requires for ``Type=notify-reload``; follow it with :meth:`ready`."""
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> bool:
        """``STOPPING=1``: shutdown has begun."""
        return self.send("STOPPING=1")

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: keep-alive ping for ``WatchdogSec=``."""
        return self.send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between :meth:`watchdog` pings: half of ``$WATCHDOG_USEC`` (as
        ``sd_watchdog_enabled(3)`` recommends), or None when no watchdog is asked of this
        process (unset, not a positive integer, or ``$WATCHDOG_PID`` names another pid)."""
        if self.address is None or not self._watchdog_usec:
            return None
        if self._watchdog_pid and self._watchdog_pid != str(os.getpid()):
            return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        return usec / 2_000_000 if usec > 0 else None


def journal_stream(stream: IO[str]) -> bool:
    """True when ``stream`` is connected to journald: ``$JOURNAL_STREAM`` (``DEVICE:INODE``,
    set by systemd for ``StandardError=journal``) names the file ``stream`` writes to.

    Comparing device and inode, as systemd.exec(5) asks, keeps a child whose stderr was
    redirected (a service writing to its log file) from believing it talks to the journal.
    """
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in value.split(":"))
        info = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError, io.UnsupportedOperation):
        return False
    return (info.st_dev, info.st_ino) == (device, inode)


def _status_field(text: str) -> str:
    return "STATUS=" + " ".join(text.split())


def summarize(reconciler: "Reconciler") -> str:
    """The STATUS line: :func:`supervisor.observe.views.summarize` of the reconciler's observed state."""
    return views.summarize(reconciler.observe())


def not_up(reconciler: "Reconciler") -> tuple[list[str], list[str]]:
    """:func:`supervisor.observe.views.not_up` of the reconciler's desired and observed state."""
    return views.not_up(reconciler.desired.services, reconciler.observe())


class UnitReporter:
    """Reports a running supervisor to systemd; every method is a no-op without a socket.

    Give :meth:`changed` to the :class:`~supervisor.reconciler.Reconciler` as ``on_change``,
    then call :meth:`attach` and :meth:`start` on the loop, :meth:`reload` for SIGHUP and
    :meth:`stopping` / :meth:`close` at shutdown. ``ready_timeout`` (seconds) bounds the wait
    for the first convergence; ``min_interval`` (seconds) rate-limits ``STATUS=`` updates.
    """

    def __init__(self, sd: SdNotify, ready_timeout: float = 60.0, min_interval: float = 0.25):
        self.sd = sd
        self.ready_timeout = ready_timeout
        self.min_interval = min_interval
        self.reconciler: Reconciler | None = None
        self.is_ready = False
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._last_status = ""
        self._last_sent = 0.0
        self._pending: asyncio.TimerHandle | None = None
        self._done = False

    @classmethod
    def from_environ(cls) -> "UnitReporter":
        """The reporter for this process: ``$NOTIFY_SOCKET`` and ``$WATCHDOG_*`` are read, then
        removed so services do not inherit them. ``$SUPERVISE_READY_TIMEOUT`` (a duration or a
        number of seconds, default 60) bounds the wait for the first convergence."""
        from ..desired.durations import parse_duration

        raw = os.environ.get("SUPERVISE_READY_TIMEOUT", "").strip()
        timeout = 60.0
        if raw:
            try:
                timeout = float(raw) if raw.replace(".", "", 1).isdigit() else parse_duration(raw)
            except ValueError as exc:
                log.warning("SUPERVISE_READY_TIMEOUT ignored: %s", exc)
        return cls(SdNotify.from_environ(unset=True), ready_timeout=timeout)

    def attach(self, reconciler: "Reconciler") -> None:
        """The reconciler whose controllers are summarised."""
        self.reconciler = reconciler

    def start(self) -> None:
        """Begin waiting for convergence and, if asked for, pinging the watchdog."""
        if not self.sd.enabled:
            return
        self._spawn(self._announce_ready())
        interval = self.sd.watchdog_interval()
        if interval is not None:
            self._spawn(self._watchdog(interval))

    def changed(self) -> None:
        """Something changed (phase, plan applied): refresh STATUS, rate-limited."""
        self._wake.set()
        if not self.sd.enabled or self.reconciler is None or self._done:
            return
        wait = self._last_sent + self.min_interval - time.monotonic()
        if wait <= 0:
            self._send_status()
        elif self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(wait, self._send_status)

    def reload(self, apply: Callable[[], Awaitable[object]]) -> None:
        """Run ``apply`` (a reload pass) between ``RELOADING=1`` and ``READY=1``. Before the
        first ``READY=1`` (still starting) nothing is sent: that one will follow anyway."""
        async def reloading() -> None:
            announce = self.is_ready
            if announce:
                self.sd.reloading()
            try:
                await apply()
            finally:
                if announce and not self._done:
                    self.sd.ready(self._status_text())

        self._spawn(reloading())

    def stopping(self) -> None:
        """``STOPPING=1``; no status update after this one."""
        self._done = True
        self.sd.send("STOPPING=1", _status_field("stopping every service"))

    async def close(self) -> None:
        """Cancel our tasks and timers (status, watchdog, reload) and wait for them."""
        self._done = True
        if self._pending is not None:
            self._pending.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- inside ------------------------------------------------------------------------------

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _status_text(self) -> str:
        return summarize(self.reconciler) if self.reconciler is not None else "starting"

    def _send_status(self) -> None:
        self._pending = None
        if self._done:
            return
        text = self._status_text()
        self._last_sent = time.monotonic()
        if text != self._last_status:
            self._last_status = text
            self.sd.status(text)

    def _converged(self) -> bool:
        """The first apply returned and nothing is still on its way up."""
        reconciler = self.reconciler
        return reconciler is not None and reconciler.applied > 0 and not not_up(reconciler)[0]

    async def _announce_ready(self) -> None:
        """READY=1 once the first apply returned and every service is up or cannot get there
        now, or at the timeout; the STATUS then names what is not up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout
        while not self._converged():
            self._wake.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        if self._done:
            return
        self.is_ready = True
        text = self._status_text()
        waiting, stuck = not_up(self.reconciler) if self.reconciler is not None else ([], [])
        if not self._converged():
            text = f"{text}; not up after {self.ready_timeout:g}s: {', '.join(waiting + stuck) or 'first pass'}"
        elif stuck:
            text = f"{text}; not up: {', '.join(stuck)}"
        if text != self._status_text():
            log.warning("telling systemd we are ready although not everything is up: %s", text)
        self._last_status = text
        self._last_sent = time.monotonic()
        self.sd.ready(text)

    async def _watchdog(self, interval: float) -> None:
        while True:
            self.sd.watchdog()
            await asyncio.sleep(interval)
