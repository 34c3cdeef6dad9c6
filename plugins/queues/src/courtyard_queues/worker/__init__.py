"""`courtyard worker`: runs the tasks of a queue served by the queues plugin.

The worker talks to the server over HTTP only (the worker protocol of docs/queues.md), so
it never needs database or Redis credentials, and runs task code written for runqy's
Python runner (`runqy_python`'s `@task`, `@load`, `run()`, `run_once()`) unchanged.
"""

from .cli import worker_command

__all__ = ["worker_command"]
