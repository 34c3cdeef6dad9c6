"""`courtyard db revision --autogenerate`: draft a plugin's next revision from its models.

The plugin's module is imported (as a load would, under a private name), its table models
are found (every class with a `__table__`, on the plugin's own `model_base()`), its
existing revisions are applied to an empty in-memory SQLite database, and Alembic's
autogenerate compares the two. The result is a draft to read: autogenerate sees tables,
columns, indexes and constraints, not renames or data changes.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

from alembic.autogenerate import produce_migrations, render_python_code
from alembic.migration import MigrationContext
from alembic.operations.ops import DowngradeOps, UpgradeOps
from courtyard_sdk import Manifest
from sqlalchemy import MetaData, create_engine
from sqlalchemy.pool import StaticPool

from ..loading import PRIVATE_PREFIX, import_directory_plugin
from ..services.revisions import MigrationError, upgrade, version_table


def draft(plugin_dir: Path, manifest: Manifest, folder: Path) -> tuple[str, str]:
    """The bodies of `upgrade()` and `downgrade()` that take the plugin's tables from its
    revisions in `folder` to its models.

    :raises MigrationError: the plugin has no code, cannot be imported, declares no table
        model, or its revisions do not apply.
    """
    metadata = _models(plugin_dir, manifest)
    engine = create_engine("sqlite://", poolclass=StaticPool)  # one in-memory database
    try:
        with engine.connect() as connection:
            if any(folder.glob("*.py")):
                upgrade(connection, manifest.name, folder)
            ours = set(metadata.tables)

            def include(obj: object, name: str | None, kind: str, *_: object) -> bool:
                return kind != "table" or name in ours  # not the version table

            context = MigrationContext.configure(
                connection,
                opts={"include_object": include, "version_table": version_table(manifest.name)},
            )
            migration = produce_migrations(context, metadata)
    finally:
        engine.dispose()
    if migration.upgrade_ops is None or migration.upgrade_ops.is_empty():
        raise MigrationError(f"{manifest.name}: the revisions already match the models")
    assert migration.downgrade_ops is not None
    return _body(migration.upgrade_ops), _body(migration.downgrade_ops)


def _models(plugin_dir: Path, manifest: Manifest) -> MetaData:
    """The `MetaData` of the plugin's table models."""
    if manifest.module is None:
        raise MigrationError(f"{manifest.name}: no module in plugin.toml, so no models")
    generation = 10**9 + uuid.uuid4().int % 10**9  # a private name no generation has
    try:
        import_directory_plugin(plugin_dir, manifest, generation)
    except Exception as exc:
        raise MigrationError(f"{manifest.name}: cannot import its module: {exc}") from exc
    prefix = f"{PRIVATE_PREFIX}{generation}_"
    found: list[MetaData] = []
    for name, module in list(sys.modules.items()):
        if not name.startswith(prefix):
            continue
        for value in vars(module).values():
            if not isinstance(value, type) or not hasattr(value, "__table__"):
                continue  # (not hasattr on anything: a proxy such as `request` raises)
            metadata = getattr(value, "metadata", None)
            if isinstance(metadata, MetaData) and all(metadata is not m for m in found):
                found.append(metadata)
    for name in [n for n in sys.modules if n.startswith(prefix)]:
        del sys.modules[name]
    if not found:
        raise MigrationError(
            f"{manifest.name}: no table model in its module (a class with table=True on "
            "the plugin's model_base())"
        )
    if len(found) > 1:
        raise MigrationError(
            f"{manifest.name}: its models use {len(found)} different bases: derive them all "
            "from one model_base()"
        )
    return found[0]


def _body(ops: UpgradeOps | DowngradeOps) -> str:
    """Rendered operations as a function body, Alembic's banner comments left out."""
    code = render_python_code(ops, sqlalchemy_module_prefix="sa.", alembic_module_prefix="op.")
    lines = [line for line in code.splitlines() if line.strip() and "###" not in line]
    return "\n".join(lines)


__all__ = ["draft"]
