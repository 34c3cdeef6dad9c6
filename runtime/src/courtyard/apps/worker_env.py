"""The first step of a sandboxed worker: takes the app's environment from stdin, then
becomes the worker (`worker_main.py`), started afresh with that environment.

Run by the pool inside the sandbox, after the uid drop, as

    python -I -S worker_env.py WORKER_MAIN [worker_main's arguments]

(-I -S: this interpreter reads no environment variable and no site-packages). It reads a
length line, then that many bytes of JSON (an object of strings), and executes
`python -P WORKER_MAIN ...` with exactly that environment. So the variables an app
chooses (LD_PRELOAD, PYTHONPATH, ...) never reach bwrap or setpriv, which run before it,
as root or before the sandbox exists. What follows on stdin (the worker's secret) is left
for the worker. It imports only `json`, `os` and `sys`, to start fast, and keeps no state.
"""

import json
import os
import sys

_MAX_ENVIRONMENT = 1024 * 1024


def _read_line(limit: int = 32) -> bytes:
    """One line from stdin, byte by byte: what follows is not ours to read."""
    line = b""
    while not line.endswith(b"\n") and len(line) < limit:
        chunk = os.read(0, 1)
        if not chunk:
            break
        line += chunk
    return line


def main() -> None:
    """Read the environment, then execute the worker with it."""
    worker_main, *args = sys.argv[1:]
    length = int(_read_line().strip() or b"0")
    if not 0 <= length <= _MAX_ENVIRONMENT:
        sys.exit("courtyard worker: the environment is too large")
    blob = b""
    while len(blob) < length:
        chunk = os.read(0, length - len(blob))
        if not chunk:
            sys.exit("courtyard worker: the environment was cut short")
        blob += chunk
    env = json.loads(blob)
    os.execve(sys.executable, [sys.executable, "-P", worker_main, *args], env)


if __name__ == "__main__":
    main()
