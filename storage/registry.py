"""Model registry: versioned model directories per product, with one active version each.

A version is a model directory (``weights.pt`` + ``config.json`` ..., see
:mod:`inference.model_dir`) copied to ``<models_dir>/<product>/<version>/`` and a
``model_versions`` row that records where it is, the sha256 of its weights, its metrics and the
data it was trained on. Versions are named ``v0001``, ``v0002``, ... per product.

Status moves ``candidate -> active -> retired`` (or ``candidate -> rejected``). :meth:`promote`
and :meth:`rollback` change two rows in one transaction, so every reader sees exactly one active
version per product; engines poll :meth:`active_versions` (one small query) to hot-swap.
"""

from __future__ import annotations

import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Row, Select, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from lineinspect import model_meta
from lineinspect.files import file_sha256
from lineinspect.names import InvalidName, check_name, child_path
from storage.db import WRITE
from storage.models import ModelVersion, Product, table
from storage.store import ResultStore, ensure_named

WEIGHTS_FILE = "weights.pt"
STATUSES = ("candidate", "active", "retired", "rejected")
_VERSION = re.compile(r"^v(\d{4,})$")


class RegistryError(RuntimeError):
    """A registry operation that cannot be done as asked; the message says why."""


class ChecksumMismatch(RegistryError):
    """A version's weights file is missing or differs from the checksum recorded at registration."""


@dataclass(frozen=True)
class VersionInfo:
    product: str
    version: str
    status: str
    path: Path
    checksum: str
    backbone: str
    threshold: float
    metrics: dict = field(default_factory=dict)
    data_snapshot: dict = field(default_factory=dict)
    parent_version: str | None = None
    reason: str | None = None
    created_at: float = 0.0
    promoted_at: float | None = None

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_FILE




class ModelRegistry:
    """Registers, promotes, rolls back and verifies model versions (rows + folders)."""

    def __init__(self, store_or_engine: ResultStore | Engine, models_dir: str | Path) -> None:
        self.db_engine: Engine = store_or_engine.db_engine if isinstance(store_or_engine, ResultStore) else store_or_engine
        self.models_dir = Path(models_dir)

    # --- writes ---------------------------------------------------------------------------
    def register(self, product: str, model_dir: str | Path, version: str | None = None, *,
                 metrics: dict | None = None, threshold: float | None = None, backbone: str | None = None,
                 data_snapshot: dict | None = None,
                 parent_version: str | None = None, status: str = "candidate", move: bool = False) -> str:
        """Copy (or ``move``) ``model_dir`` into the registry as a new version; returns its name.

        ``status`` may be ``candidate`` or ``rejected`` (a failed candidate kept for the record);
        making a version active is :meth:`promote`'s job. ``threshold`` and ``backbone`` default to
        the model directory's ``calibration.json`` / ``config.json``.
        """
        _check_product(product)
        if status not in ("candidate", "rejected"):
            raise RegistryError(f"register() status must be 'candidate' or 'rejected', not {status!r}; use promote()")
        if version is not None and not _VERSION.match(version):
            raise RegistryError(f"version names look like v0001, not {version!r}")
        src = Path(model_dir)
        if not (src / WEIGHTS_FILE).is_file():
            raise RegistryError(f"{src} is not a model directory: {WEIGHTS_FILE} is missing")
        threshold, backbone = _describe(src, threshold, backbone)
        checksum = file_sha256(src / WEIGHTS_FILE)
        staging = child_path(self.models_dir, product) / f".incoming-{uuid.uuid4().hex}"
        staging.parent.mkdir(parents=True, exist_ok=True)
        if move:
            shutil.move(str(src), staging)
        else:
            shutil.copytree(src, staging)
        if file_sha256(staging / WEIGHTS_FILE) != checksum:
            shutil.rmtree(staging, ignore_errors=True)
            raise RegistryError(f"{src}/{WEIGHTS_FILE} changed while it was being copied; register it again")
        for _attempt in range(5):  # two trainers registering at once: the unique constraint decides
            name = version
            try:
                with self.db_engine.connect().execution_options(**WRITE) as conn, conn.begin():
                    pid = ensure_named(conn, Product, [product], time.time())[product]
                    name = name or _next_version(conn, pid)
                    dest = child_path(child_path(self.models_dir, product), name, kind="version")
                    conn.execute(table(ModelVersion).insert().values(
                        product_id=pid, version=name, status=status, path=str(dest.resolve()), checksum=checksum,
                        backbone=backbone, threshold=float(threshold), metrics=dict(metrics or {}),
                        data_snapshot=dict(data_snapshot or {}), parent_version=parent_version,
                        reason=None, created_at=time.time(), promoted_at=None))
                    if dest.exists():  # checked after the insert, so a registered name reports as such
                        raise RegistryError(f"{dest} already exists but is not registered; move it away first")
                    staging.rename(dest)  # inside the transaction: a failed rename rolls the row back
                return name
            except IntegrityError:
                if version is not None:
                    shutil.rmtree(staging, ignore_errors=True)
                    raise RegistryError(f"{product} {version} is already registered") from None
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        shutil.rmtree(staging, ignore_errors=True)
        raise RegistryError(f"could not allocate a version name for {product} (too many concurrent registrations)")

    def promote(self, product: str, version: str) -> VersionInfo:
        """Make ``version`` the active one (the previous active becomes retired), atomically.

        The weights are verified first: a corrupted version is never activated.
        """
        with self.db_engine.connect().execution_options(**WRITE) as conn, conn.begin():
            rows = self._lock_rows(conn, product)
            target = _pick(rows, product, version)
            if target.status == "active":
                return target
            if target.status == "rejected":
                raise RegistryError(f"{product} {version} was rejected ({target.reason}); it cannot be promoted")
            self.verify(target)
            now = time.time()
            for other in rows.values():
                if other.status == "active":
                    self._set(conn, product, other.version, status="retired")
            self._set(conn, product, version, status="active", promoted_at=now)
        return self.get(product, version)

    def rollback(self, product: str) -> VersionInfo:
        """Re-activate the version that was active before the current one; the current one retires.

        Repeated rollbacks walk further back through the promotion history.
        """
        with self.db_engine.connect().execution_options(**WRITE) as conn, conn.begin():
            rows = self._lock_rows(conn, product)
            current = next((v for v in rows.values() if v.status == "active"), None)
            if current is None:
                raise RegistryError(f"{product} has no active version to roll back from")
            earlier = [v for v in rows.values() if v.status == "retired" and v.promoted_at is not None
                       and v.promoted_at < (current.promoted_at or 0.0)]
            if not earlier:
                raise RegistryError(f"{product} {current.version} has no earlier active version to roll back to")
            previous = max(earlier, key=lambda v: (v.promoted_at, v.version))
            self.verify(previous)
            self._set(conn, product, current.version, status="retired", reason=f"rolled back to {previous.version}")
            self._set(conn, product, previous.version, status="active")  # keeps its promoted_at: history order
        return self.get(product, previous.version)

    def reject(self, product: str, version: str, reason: str) -> VersionInfo:
        """Mark a candidate (or retired) version as rejected, with the reason, so it is never promoted."""
        with self.db_engine.connect().execution_options(**WRITE) as conn, conn.begin():
            rows = self._lock_rows(conn, product)
            target = _pick(rows, product, version)
            if target.status == "active":
                raise RegistryError(f"{product} {version} is active; promote or roll back to another version first")
            self._set(conn, product, version, status="rejected", reason=reason)
        return self.get(product, version)

    # --- reads ----------------------------------------------------------------------------
    def get(self, product: str, version: str) -> VersionInfo:
        found = [v for v in self.list(product) if v.version == version]
        if not found:
            raise RegistryError(f"{product} has no version {version!r}")
        return found[0]

    def active(self, product: str) -> VersionInfo | None:
        return self.active_versions().get(product)

    def list(self, product: str | None = None) -> list[VersionInfo]:
        """Versions ordered by product, then version name."""
        q = _select_versions()
        if product is not None:
            q = q.where(Product.name == product)
        with self.db_engine.connect() as conn:
            return [_info(r) for r in conn.execute(q.order_by(Product.name, ModelVersion.version)).all()]

    def active_versions(self) -> dict[str, VersionInfo]:
        """{product: its active version}; one indexed query, cheap enough to poll every few seconds."""
        q = _select_versions().where(ModelVersion.status == "active")
        with self.db_engine.connect() as conn:
            return {r.product: _info(r) for r in conn.execute(q).all()}

    def verify(self, info: VersionInfo) -> None:
        """Raise :class:`ChecksumMismatch` unless the weights match the sha256 recorded at registration
        and every file of the directory matches its checksums.json (config, calibration, exports)."""
        _check_product(info.product)
        weights = info.weights_path
        if not weights.is_file():
            raise ChecksumMismatch(f"{info.product} {info.version}: weights file {weights} is missing")
        actual = file_sha256(weights)
        if actual != info.checksum:
            raise ChecksumMismatch(f"{info.product} {info.version}: {weights} has sha256 {actual[:12]}..., "
                                   f"the registry recorded {info.checksum[:12]}... (file replaced or corrupted)")
        try:
            model_meta.verify(info.path)
        except model_meta.ModelDirError as exc:
            raise ChecksumMismatch(f"{info.product} {info.version}: {exc}") from None

    # --- helpers --------------------------------------------------------------------------
    def _lock_rows(self, conn: Connection, product: str) -> dict[str, VersionInfo]:
        """This product's versions, row-locked on PostgreSQL (SQLite: BEGIN IMMEDIATE already serialises)."""
        q = _select_versions().where(Product.name == product)
        if conn.dialect.name == "postgresql":
            q = q.with_for_update(of=ModelVersion)
        return {r.version: _info(r) for r in conn.execute(q).all()}

    @staticmethod
    def _set(conn: Connection, product: str, version: str, **values: Any) -> None:
        pid = select(Product.id).where(Product.name == product).scalar_subquery()
        conn.execute(update(ModelVersion).where(ModelVersion.product_id == pid, ModelVersion.version == version)
                     .values(**values))


def _pick(rows: dict[str, VersionInfo], product: str, version: str) -> VersionInfo:
    """``version`` among the locked ``rows`` of ``product``, or a RegistryError naming the known ones."""
    target = rows.get(version)
    if target is None:
        raise RegistryError(f"{product} has no version {version!r} (known: {sorted(rows) or 'none'})")
    return target


def _select_versions() -> Select[Any]:
    return select(*ModelVersion.__table__.columns, Product.name.label("product")).join(
        Product, Product.id == ModelVersion.product_id)


def _info(r: Row[Any]) -> VersionInfo:
    return VersionInfo(product=r.product, version=r.version, status=r.status, path=Path(r.path),
                       checksum=r.checksum, backbone=r.backbone, threshold=float(r.threshold),
                       metrics=dict(r.metrics or {}), data_snapshot=dict(r.data_snapshot or {}),
                       parent_version=r.parent_version, reason=r.reason, created_at=float(r.created_at),
                       promoted_at=None if r.promoted_at is None else float(r.promoted_at))


def _next_version(conn: Connection, product_id: int) -> str:
    names = conn.execute(select(ModelVersion.version).where(ModelVersion.product_id == product_id)).scalars()
    numbers = [int(m.group(1)) for n in names if (m := _VERSION.match(n))]
    return f"v{max(numbers, default=0) + 1:04d}"


def _describe(model_dir: Path, threshold: float | None, backbone: str | None) -> tuple[float, str]:
    """Fill a missing threshold / backbone name from the model directory (lineinspect.model_meta)."""
    if threshold is not None and backbone is not None:
        return float(threshold), str(backbone)
    try:
        d = model_meta.describe(model_dir)
    except model_meta.ModelDirError as exc:
        raise RegistryError(f"no threshold/backbone given and {exc}") from None
    return float(d.threshold if threshold is None else threshold), str(backbone or d.backbone)


def _check_product(product: str) -> None:
    """Product names become folder names: the one name rule (lineinspect.names)."""
    try:
        check_name("product", product)
    except InvalidName as exc:
        raise RegistryError(str(exc)) from None

