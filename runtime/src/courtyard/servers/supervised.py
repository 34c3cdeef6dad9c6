"""One of the server processes of `courtyard serve --workers N`: the supervisor
(supervisor.py) starts it as `python -m courtyard.servers.supervised`, and it serves as
`courtyard serve` does alone (server.py), on its share of the address.

It gets its settings pickled on stdin (exactly as the supervisor read them; secrets
never pass through its command line or environment), its index (`--index`: its log
lines say `worker <index>`), a pipe to tell the supervisor when it serves or why it could not
(`--control-fd`: lines of JSON, `{"ready": true}` or `{"error": "..."}`), and with the
memory event bus, its connection to the supervisor's event hub (`--hub-fd`,
services/events_hub.py), and its connection to the supervisor's pool of app workers
(`--apps-fd`, apps/shared_pool.py). It stops (SIGTERM: gracefully) when the supervisor dies.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import sys

from courtyard_sdk import CourtyardError

from ..logs import configure_logging, set_worker
from ..settings import Settings
from .loops import run
from .processes import stop_with_parent


class Control:
    """The pipe to the supervisor."""

    def __init__(self, fd: int) -> None:
        os.set_inheritable(fd, False)  # app workers and other children do not get it
        self.fd = fd

    def tell(self, message: dict[str, object]) -> None:
        """Send one message (a short line: written whole)."""
        with contextlib.suppress(OSError):  # the supervisor is gone: SIGTERM follows
            os.write(self.fd, json.dumps(message).encode() + b"\n")


def main(argv: list[str] | None = None) -> None:
    """Serve as worker `--index` of the supervisor `--parent`; exit 1 if it cannot."""
    parser = argparse.ArgumentParser(prog="courtyard.servers.supervised")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--hub-fd", type=int, default=-1)
    parser.add_argument("--apps-fd", type=int, default=-1)
    args = parser.parse_args(argv)
    stop_with_parent(args.parent)
    settings = pickle.load(sys.stdin.buffer)
    if not isinstance(settings, Settings):
        raise SystemExit("courtyard.servers.supervised: no settings on stdin")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # nothing more comes from the supervisor there
    os.close(devnull)
    control = Control(args.control_fd)
    set_worker(args.index)
    configure_logging(settings.log_level, settings.log_format)
    if args.hub_fd >= 0:
        from ..services.events_hub import use_hub

        use_hub(args.hub_fd)
    if args.apps_fd >= 0:
        from ..apps.host import use_host

        os.set_inheritable(args.apps_fd, False)  # not for the app workers it starts
        use_host(args.apps_fd)
    # Imported here, after the logging set-up: the server pulls in Quart and the rest.
    from ..server import serve

    try:
        run(
            serve(settings, worker=args.index, on_ready=lambda: control.tell({"ready": True})),
            settings.loop,
        )
    except CourtyardError as exc:
        control.tell({"error": str(exc)})
        sys.exit(1)


if __name__ == "__main__":
    main()
