"""courtyard-queues: runqy's task-queue server (runqy's API) for Courtyard, on the runtime's
database or on Redis, and the `courtyard worker` command that runs its tasks.

The hooks live in `courtyard_queues.plugin`; see docs/queues.md.
"""
