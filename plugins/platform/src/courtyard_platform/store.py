"""Projects, operations and steps on the runtime's database.

Every change that touches the one-active-operation rule first locks the project's row
(an `UPDATE` of the row as the transaction's first statement: a row lock on PostgreSQL,
the write lock on SQLite), so two requests, two consumers or two runtime instances
deciding about the same project run one after the other and never both take the lock.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from courtyard_sdk import ApiError
from courtyard_sdk.services import Database
from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import COMMITS, OPS, PROJECTS, STEPS

QUEUED = "queued"
RUNNING = "running"
DONE = "done"
ERROR = "error"
FINISHED = (DONE, ERROR)

STEP_PENDING = "pending"
STEP_RUNNING = "running"
STEP_DONE = "done"
STEP_ERROR = "error"
STEP_SKIPPED = "skipped"

READY = "Ready"
RECONCILING = "Reconciling"
DELETING = "Deleting"
FAILED = "Error"


def utcnow() -> datetime:
    """Now, as the naive UTC the tables store."""
    return datetime.now(UTC).replace(tzinfo=None)


def stamp(moment: datetime | None) -> str | None:
    """RFC 3339 in UTC (`2026-01-31T12:00:00.123456Z`), or None."""
    return None if moment is None else moment.isoformat() + "Z"


def new_id() -> str:
    """A new project or operation id: 32 lowercase hexadecimal digits."""
    return uuid.uuid4().hex


def is_id(text: str) -> bool:
    """Whether `text` is shaped like an id `new_id` gives."""
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


class Busy(Exception):
    """The project has an active operation already."""

    def __init__(self, op_id: str) -> None:
        super().__init__(op_id)
        self.op_id = op_id


def not_found(project_id: str) -> ApiError:
    """404 PROJECT_NOT_FOUND."""
    return ApiError(404, "PROJECT_NOT_FOUND", f"project {project_id!r} not found")


def busy(op_id: str) -> ApiError:
    """409 OP_IN_PROGRESS."""
    return ApiError(
        409,
        "OP_IN_PROGRESS",
        f"the project has an active operation ({op_id}): wait for it to finish",
    )


def name_taken(name: str) -> ApiError:
    """409 PROJECT_NAME_TAKEN."""
    return ApiError(409, "PROJECT_NAME_TAKEN", f"a project named {name!r} exists already")


@dataclass(frozen=True)
class Accepted:
    """An operation as accepted: the project (as JSON), the operation (as JSON), and
    whether it holds the project's lock (False: queued behind the active one)."""

    project: dict[str, Any]
    op: dict[str, Any]
    started: bool


def project_json(row: Any) -> dict[str, Any]:
    """A project as the API shows it."""
    return {
        "id": row.id,
        "created_at": stamp(row.created_at),
        "updated_at": stamp(row.updated_at),
        "spec": json.loads(row.spec),
        "status": {
            "phase": row.phase,
            "updated_at": stamp(row.updated_at),
            "last_op_id": row.last_op_id or "",
            "last_op_kind": row.last_op_kind or "",
            "message": row.message,
        },
        "deployments": json.loads(row.deployments),
    }


def op_json(row: Any, steps: Sequence[Any]) -> dict[str, Any]:
    """An operation as the API shows it, with every step."""
    params = json.loads(row.params)
    params.pop("spec", None)  # the project shows the spec; an op shows what it was asked
    return {
        "id": row.id,
        "kind": row.kind,
        "project_id": row.project_id,
        "status": row.status,
        "error": row.error,
        "params": params,
        "requested": stamp(row.requested_at),
        "started": stamp(row.started_at),
        "finished": stamp(row.finished_at),
        "steps": [
            {
                "worker": step.worker,
                "status": step.status,
                "started_at": stamp(step.started_at),
                "ended_at": stamp(step.ended_at),
                "message": step.message,
                "error": step.error,
                "artifacts": json.loads(step.artifacts),
                "attempts": step.attempts,
                "consumer": step.consumer or "",
            }
            for step in steps
        ],
    }


class Store:
    """See the module docstring."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # Reading ---------------------------------------------------------------------------

    async def projects(self) -> list[dict[str, Any]]:
        """Every project, oldest first."""
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(select(PROJECTS).order_by(PROJECTS.c.created_at))
            return [project_json(row) for row in rows]

    async def project_row(self, project_id: str) -> Any:
        """A project's row. :raises ApiError: 404."""
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(select(PROJECTS).where(PROJECTS.c.id == project_id))).first()
        if row is None:
            raise not_found(project_id)
        return row

    async def project(self, project_id: str) -> dict[str, Any]:
        """A project. :raises ApiError: 404."""
        return project_json(await self.project_row(project_id))

    async def op(self, op_id: str) -> dict[str, Any] | None:
        """An operation with its steps, or None."""
        async with self.db.engine.connect() as conn:
            return await _op(conn, op_id)

    async def op_row(self, op_id: str) -> Any:
        """An operation's row, or None."""
        async with self.db.engine.connect() as conn:
            return (await conn.execute(select(OPS).where(OPS.c.id == op_id))).first()

    async def step_row(self, op_id: str, position: int) -> Any:
        """One step's row, or None."""
        async with self.db.engine.connect() as conn:
            return (
                await conn.execute(
                    select(STEPS).where(STEPS.c.op_id == op_id, STEPS.c.position == position)
                )
            ).first()

    async def project_ops(self, project_id: str, limit: int = 20) -> list[dict[str, Any]]:
        """A project's latest operations, newest first."""
        async with self.db.engine.connect() as conn:
            ids = (
                await conn.execute(
                    select(OPS.c.id)
                    .where(OPS.c.project_id == project_id)
                    .order_by(OPS.c.requested_at.desc())
                    .limit(limit)
                )
            ).scalars()
            found = [await _op(conn, op_id) for op_id in list(ids)]
        return [op for op in found if op is not None]

    # Accepting operations --------------------------------------------------------------

    async def create(
        self, spec: dict[str, Any], workers: list[str], params: dict[str, Any]
    ) -> Accepted:
        """A new project and its `create` operation, holding the project's lock.

        :raises ApiError: 409 PROJECT_NAME_TAKEN.
        """
        project_id, op_id, moment = new_id(), new_id(), utcnow()
        try:
            async with self.db.engine.begin() as conn:
                await conn.execute(
                    insert(PROJECTS).values(
                        id=project_id,
                        name=spec["name"],
                        spec=json.dumps(spec),
                        phase=RECONCILING,
                        message="",
                        last_op_id=op_id,
                        last_op_kind="create",
                        active_op_id=op_id,
                        deployments="{}",
                        created_at=moment,
                        updated_at=moment,
                    )
                )
                await _insert_op(conn, op_id, project_id, "create", {**params, "spec": spec},
                                 workers, moment)  # fmt: skip
                project = await _project(conn, project_id)
                op = await _op(conn, op_id)
        except IntegrityError:
            raise name_taken(spec["name"]) from None
        assert op is not None
        return Accepted(project, op, True)

    async def start(
        self,
        project_id: str,
        kind: str,
        workers: list[str],
        params: dict[str, Any],
        *,
        spec: dict[str, Any] | None = None,
        queue_if_busy: bool = False,
    ) -> Accepted:
        """An operation on an existing project: it takes the project's lock, or (with
        `queue_if_busy`) waits `queued` behind the active operation.

        :raises ApiError: 404, 409 OP_IN_PROGRESS, 409 PROJECT_NAME_TAKEN.
        """
        op_id, moment = new_id(), utcnow()
        try:
            async with self.db.engine.begin() as conn:
                row = await _lock(conn, project_id)
                if row is None:
                    raise not_found(project_id)
                held = row.active_op_id is not None
                if held and not queue_if_busy:
                    raise busy(row.active_op_id)
                if not held:
                    changes: dict[str, Any] = {
                        "active_op_id": op_id,
                        "last_op_id": op_id,
                        "last_op_kind": kind,
                        "phase": DELETING if kind == "delete" else RECONCILING,
                        "message": "",
                        "updated_at": moment,
                    }
                    if spec is not None:
                        changes.update(name=spec["name"], spec=json.dumps(spec))
                    await conn.execute(
                        update(PROJECTS).where(PROJECTS.c.id == project_id).values(**changes)
                    )
                if spec is not None:
                    params = {**params, "spec": spec}
                await _insert_op(conn, op_id, project_id, kind, params, workers, moment)
                project = await _project(conn, project_id)
                op = await _op(conn, op_id)
        except IntegrityError:
            assert spec is not None
            raise name_taken(spec["name"]) from None
        assert op is not None
        return Accepted(project, op, not held)

    async def record_commit(
        self, project_id: str, commit: str, trigger: str, op_id: str | None
    ) -> bool:
        """Remember that `commit` of the project was processed. :return: False when it
        was already (the insert is the check, so two callers never both win)."""
        try:
            async with self.db.engine.begin() as conn:
                await conn.execute(
                    insert(COMMITS).values(
                        project_id=project_id,
                        commit=commit,
                        trigger=trigger,
                        op_id=op_id,
                        created_at=utcnow(),
                    )
                )
        except IntegrityError:
            return False
        return True

    async def forget_commit(self, project_id: str, commit: str) -> None:
        """Undo `record_commit` (its operation could not be accepted)."""
        async with self.db.engine.begin() as conn:
            await conn.execute(
                delete(COMMITS).where(
                    COMMITS.c.project_id == project_id, COMMITS.c.commit == commit
                )
            )

    async def set_commit_op(self, project_id: str, commit: str, op_id: str) -> None:
        """Link a processed commit to the operation it started."""
        async with self.db.engine.begin() as conn:
            await conn.execute(
                update(COMMITS)
                .where(COMMITS.c.project_id == project_id, COMMITS.c.commit == commit)
                .values(op_id=op_id)
            )

    # Running steps ---------------------------------------------------------------------

    async def step_started(
        self, op_id: str, position: int, task_id: str, consumer: str = ""
    ) -> bool:
        """Mark a step running (and its operation). :return: False when the operation is
        finished already (nothing to run)."""
        moment = utcnow()
        async with self.db.engine.begin() as conn:
            op = (await conn.execute(select(OPS).where(OPS.c.id == op_id))).first()
            if op is None or op.status in FINISHED:
                return False
            if op.status == QUEUED:
                await conn.execute(
                    update(OPS).where(OPS.c.id == op_id).values(status=RUNNING, started_at=moment)
                )
            step = _step_where(op_id, position)
            row = (await conn.execute(select(STEPS).where(step))).first()
            await conn.execute(
                update(STEPS)
                .where(step)
                .values(
                    status=STEP_RUNNING,
                    attempts=(row.attempts if row else 0) + 1,
                    task_id=task_id,
                    consumer=consumer,
                    started_at=(row.started_at if row and row.started_at else moment),
                    error="",
                )
            )
        return True

    async def step_done(
        self, op_id: str, position: int, message: str, artifacts: list[str]
    ) -> None:
        """Record a step's success."""
        async with self.db.engine.begin() as conn:
            await conn.execute(
                update(STEPS)
                .where(_step_where(op_id, position))
                .values(
                    status=STEP_DONE,
                    message=message,
                    error="",
                    artifacts=json.dumps(sorted(set(artifacts))),
                    ended_at=utcnow(),
                )
            )

    async def step_retrying(self, op_id: str, position: int, error: str) -> None:
        """Record a failed attempt that will be retried."""
        async with self.db.engine.begin() as conn:
            await conn.execute(
                update(STEPS)
                .where(_step_where(op_id, position))
                .values(message=f"attempt failed, retrying: {error}")
            )

    async def step_failed(self, op_id: str, position: int, error: str) -> None:
        """Record a step's failure; the later steps are skipped."""
        moment = utcnow()
        async with self.db.engine.begin() as conn:
            await conn.execute(
                update(STEPS)
                .where(_step_where(op_id, position))
                .values(status=STEP_ERROR, error=error, message=error, ended_at=moment)
            )
            await conn.execute(
                update(STEPS)
                .where(
                    STEPS.c.op_id == op_id,
                    STEPS.c.position > position,
                    STEPS.c.status == STEP_PENDING,
                )
                .values(status=STEP_SKIPPED)
            )

    async def set_deployment(self, project_id: str, env: str, record: dict[str, Any]) -> None:
        """Record what runs in an environment of the project (image, commit, op)."""
        async with self.db.engine.begin() as conn:
            row = await _lock(conn, project_id)
            if row is None:
                return
            deployments = json.loads(row.deployments)
            deployments[env] = record
            await conn.execute(
                update(PROJECTS)
                .where(PROJECTS.c.id == project_id)
                .values(deployments=json.dumps(deployments, sort_keys=True))
            )

    async def finish(self, op_id: str, status: str, error: str = "") -> tuple[bool, str | None]:
        """Finish an operation: record its outcome on it and its project, release the
        project's lock and hand it to the oldest queued operation, if any.

        :return: (whether this call finished it, the id of the operation that now holds
            the lock and should be started).
        """
        moment = utcnow()
        async with self.db.engine.begin() as conn:
            op = (await conn.execute(select(OPS).where(OPS.c.id == op_id))).first()
            if op is None or op.status in FINISHED:
                return False, None
            row = await _lock(conn, op.project_id)
            await conn.execute(
                update(OPS)
                .where(OPS.c.id == op_id)
                .values(status=status, error=error, finished_at=moment)
            )
            await conn.execute(
                update(STEPS)
                .where(STEPS.c.op_id == op_id, STEPS.c.status == STEP_PENDING)
                .values(status=STEP_SKIPPED)
            )
            if row is None:
                return True, None
            if op.kind == "delete" and status == DONE:
                await _drop_project(conn, op.project_id, moment)
                return True, None
            holder = row.active_op_id
            if holder not in (None, op_id):
                return True, None  # queued behind another: the lock is not ours
            following = await _oldest_queued(conn, op.project_id, op_id)
            changes: dict[str, Any] = {"active_op_id": following, "updated_at": moment}
            if holder == op_id:
                changes.update(
                    phase=READY if status == DONE else FAILED,
                    message=error,
                )
            if following is not None:
                kind = (
                    await conn.execute(select(OPS.c.kind).where(OPS.c.id == following))
                ).scalar_one()
                changes.update(
                    last_op_id=following,
                    last_op_kind=kind,
                    phase=DELETING if kind == "delete" else RECONCILING,
                )
            await conn.execute(
                update(PROJECTS).where(PROJECTS.c.id == op.project_id).values(**changes)
            )
        return True, following

    # Maintenance -----------------------------------------------------------------------

    async def orphans(self) -> list[str]:
        """Queued operations whose project holds no lock (left so by a crash between the
        release and the hand-over): each is taken by the next `take_lock`."""
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(
                select(OPS.c.id)
                .select_from(OPS.join(PROJECTS, PROJECTS.c.id == OPS.c.project_id))
                .where(OPS.c.status == QUEUED, PROJECTS.c.active_op_id.is_(None))
                .order_by(OPS.c.requested_at)
            )
            return list(rows.scalars())

    async def take_lock(self, op_id: str) -> bool:
        """Give a queued operation its project's lock, if nobody holds it."""
        async with self.db.engine.begin() as conn:
            op = (await conn.execute(select(OPS).where(OPS.c.id == op_id))).first()
            if op is None or op.status != QUEUED:
                return False
            row = await _lock(conn, op.project_id)
            if row is None or row.active_op_id is not None:
                return False
            first = await _oldest_queued(conn, op.project_id, None)
            if first != op_id:
                return False
            await conn.execute(
                update(PROJECTS)
                .where(PROJECTS.c.id == op.project_id)
                .values(active_op_id=op_id, last_op_id=op_id, last_op_kind=op.kind,
                        phase=DELETING if op.kind == "delete" else RECONCILING)
            )  # fmt: skip
        return True

    async def stalled(self, grace: float) -> list[tuple[str, str]]:
        """Queued operations holding their project's lock for more than `grace` seconds
        (a crash between accepting one and enqueueing its first step): (op, worker)."""
        cutoff = utcnow() - timedelta(seconds=grace)
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(
                select(OPS.c.id, STEPS.c.worker)
                .select_from(
                    OPS.join(PROJECTS, PROJECTS.c.active_op_id == OPS.c.id).join(
                        STEPS, and_(STEPS.c.op_id == OPS.c.id, STEPS.c.position == 0)
                    )
                )
                .where(OPS.c.status == QUEUED, OPS.c.requested_at < cutoff)
            )
            return [(row.id, row.worker) for row in rows]

    async def active_steps(self) -> list[Any]:
        """The running step of every running operation, with its task id."""
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(
                select(STEPS)
                .select_from(STEPS.join(OPS, OPS.c.id == STEPS.c.op_id))
                .where(
                    OPS.c.status == RUNNING,
                    STEPS.c.status == STEP_RUNNING,
                    STEPS.c.task_id.is_not(None),
                )
            )
            return list(rows)

    async def lost_ops(self, project_ids: list[str]) -> list[str]:
        """Unfinished operations of projects that no longer exist."""
        if not project_ids:
            return []
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(
                select(OPS.c.id).where(
                    OPS.c.project_id.in_(project_ids), OPS.c.status.in_((QUEUED, RUNNING))
                )
            )
            return list(rows.scalars())


def _step_where(op_id: str, position: int) -> Any:
    return and_(STEPS.c.op_id == op_id, STEPS.c.position == position)


async def _lock(conn: AsyncConnection, project_id: str) -> Any:
    """Lock the project's row for the transaction and read it (None: no such project)."""
    result = await conn.execute(
        update(PROJECTS).where(PROJECTS.c.id == project_id).values(updated_at=PROJECTS.c.updated_at)
    )
    if result.rowcount == 0:
        return None
    return (await conn.execute(select(PROJECTS).where(PROJECTS.c.id == project_id))).first()


async def _project(conn: AsyncConnection, project_id: str) -> dict[str, Any]:
    row = (await conn.execute(select(PROJECTS).where(PROJECTS.c.id == project_id))).one()
    return project_json(row)


async def _op(conn: AsyncConnection, op_id: str) -> dict[str, Any] | None:
    row = (await conn.execute(select(OPS).where(OPS.c.id == op_id))).first()
    if row is None:
        return None
    steps = await conn.execute(
        select(STEPS).where(STEPS.c.op_id == op_id).order_by(STEPS.c.position)
    )
    return op_json(row, list(steps))


async def _insert_op(
    conn: AsyncConnection,
    op_id: str,
    project_id: str,
    kind: str,
    params: dict[str, Any],
    workers: list[str],
    moment: datetime,
) -> None:
    await conn.execute(
        insert(OPS).values(
            id=op_id,
            project_id=project_id,
            kind=kind,
            status=QUEUED,
            error="",
            params=json.dumps(params, sort_keys=True),
            requested_at=moment,
        )
    )
    await conn.execute(
        insert(STEPS),
        [
            {
                "op_id": op_id,
                "position": position,
                "worker": worker,
                "status": STEP_PENDING,
                "message": "",
                "error": "",
                "artifacts": "[]",
                "attempts": 0,
            }
            for position, worker in enumerate(workers)
        ],
    )


async def _oldest_queued(conn: AsyncConnection, project_id: str, besides: str | None) -> Any:
    query = select(OPS.c.id).where(OPS.c.project_id == project_id, OPS.c.status == QUEUED)
    if besides is not None:
        query = query.where(OPS.c.id != besides)
    return (await conn.execute(query.order_by(OPS.c.requested_at).limit(1))).scalar()


async def _drop_project(conn: AsyncConnection, project_id: str, moment: datetime) -> None:
    """Delete the project's row and its commits; its queued operations fail."""
    await conn.execute(delete(PROJECTS).where(PROJECTS.c.id == project_id))
    await conn.execute(delete(COMMITS).where(COMMITS.c.project_id == project_id))
    await conn.execute(
        update(OPS)
        .where(OPS.c.project_id == project_id, OPS.c.status == QUEUED)
        .values(status=ERROR, error="the project was deleted", finished_at=moment)
    )
    await conn.execute(
        update(STEPS)
        .where(
            STEPS.c.op_id.in_(
                select(OPS.c.id).where(
                    OPS.c.project_id == project_id, OPS.c.error == "the project was deleted"
                )
            ),
            STEPS.c.status == STEP_PENDING,
        )
        .values(status=STEP_SKIPPED)
    )
