"""The first code a new supervise runs after a self-update's exec, written by the OLD one.

The running supervise copies this file, as it is in *its* version, to
``STATE_DIR/self/boot-HASH.py`` and execs ``NEW/bin/python -P THAT_FILE ARGS...`` (same pid).
So the guard that decides whether the new version started is code that already proved itself:
if the new code cannot even be imported (a syntax error, a missing dependency), raises or
returns before it says it is ready, or says nothing within the deadline, this file execs the
previous install again (``fallback``: its argv and environment), which adopts the services once
more and reports why the upgrade failed. A new supervise proves itself by writing ``ready`` to
the pipe whose write end is named by ``SUPERVISE_READY_FD`` (after it adopted every replica,
opened its control socket and applied one reconcile pass).

``SUPERVISE_BOOT`` (JSON, taken out of the environment first) holds ``fallback`` (argv list),
``handover`` (the ``SUPERVISE_HANDOVER`` the fallback gets: a JSON object whose ``failed.error``
this file fills in), ``keep_fds`` (fds the fallback inherits: the state lock) and ``deadline``
(seconds). Without it (a supervise started by a previous upgrade and re-exec'd as a fallback),
this file just runs the CLI.

Only the standard library is used here, and nothing from the package: it runs in the new
interpreter, before (and whatever) the new package is.
"""

import json
import os
import select
import sys
import threading


def main() -> None:
    raw = os.environ.pop("SUPERVISE_BOOT", None)
    args = sys.argv[1:]
    sys.argv = ["supervise", *args]
    if raw is None:
        from supervisor.cli import main as cli_main

        sys.exit(cli_main(args))
    boot = json.loads(raw)
    environ = dict(os.environ)  # as the old supervise had it, less SUPERVISE_BOOT
    lock = threading.Lock()
    ready = threading.Event()
    read_fd, write_fd = os.pipe()
    os.environ["SUPERVISE_READY_FD"] = str(write_fd)

    def fall_back(reason: str) -> None:
        """Exec the previous version, told ``reason``; nothing once the new one said ready."""
        with lock:
            if said_ready(0):  # (it may have said so just before it returned or raised)
                return
            handover = json.loads(boot["handover"])
            handover.setdefault("failed", {})["error"] = reason[:500]
            env = {k: v for k, v in environ.items() if k != "SUPERVISE_HANDOVER"}
            env["SUPERVISE_HANDOVER"] = json.dumps(handover)
            for fd in boot.get("keep_fds") or []:
                try:
                    os.set_inheritable(fd, True)
                except OSError:
                    pass  # closed by the new code: the old one takes the lock anew
            print(f"supervise: the new version did not start ({reason[:500]}): going back to the previous one",
                  file=sys.stderr, flush=True)
            argv = boot["fallback"]
            os.execve(argv[0], argv, env)

    def said_ready(wait: float) -> bool:
        """True once the new code wrote ``ready`` (waiting up to ``wait`` seconds for it).
        Called with ``lock`` held, so the watcher and the main thread never both read."""
        if ready.is_set():
            return True
        readable, _, _ = select.select([read_fd], [], [], wait)
        if readable and os.read(read_fd, 64).startswith(b"ready"):
            ready.set()
        return ready.is_set()

    def watch() -> None:
        deadline = float(boot.get("deadline", 60))
        readable, _, _ = select.select([read_fd], [], [], deadline)
        fall_back("it did not say it was ready within %gs" % deadline if not readable
                  else "it ended before it was ready")

    threading.Thread(target=watch, name="upgrade-watch", daemon=True).start()
    try:
        from supervisor.cli import main as cli_main

        code = cli_main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # noqa: BLE001 - whatever the new code does, the old one takes over
        fall_back(f"{type(exc).__name__}: {exc}")
        raise
    fall_back(f"it exited with status {code} before it was ready")
    sys.exit(code)


if __name__ == "__main__":
    main()
