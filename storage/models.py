"""SQLAlchemy 2 ORM schema: the same models on PostgreSQL (production) and SQLite (embedded).

Design notes
* ``inspection_results`` is the big table (one row per frame). Its natural key
  ``(camera_id, frame_id)`` is UNIQUE, which is what makes redelivered Kafka messages harmless:
  writes are ``INSERT .. ON CONFLICT DO NOTHING``.
* Time columns are epoch seconds (float, UTC) so time bucketing is plain arithmetic that runs
  inside either database (``floor(captured_at / 60)``) and aggregates stay in SQL.
* Masks are compressed single-channel PNGs in ``masks.png`` (bytea / BLOB), only for frames with
  a defect verdict; normal frames have no mask row. Keeping bytes in the database (rather than
  files with paths) means consumers and the trainer can run on different hosts with nothing but
  the database in common, and retention is one DELETE.
* Full frames are kept for flagged frames (``frame_images``: the dashboard's "full frame" view)
  and for accumulated normal training data (``training_samples``).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# BIGINT primary keys on PostgreSQL, INTEGER (rowid alias, autoincrement) on SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def table(model: type[Base]) -> Table:
    """The Core ``Table`` of a mapped class (typed: ``Model.__table__`` is a bare FromClause to mypy)."""
    return Base.metadata.tables[model.__tablename__]


class Base(DeclarativeBase):
    pass


class Product(Base):
    __tablename__ = "products"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    expected_views: Mapped[int | None] = mapped_column(Integer, nullable=True)  # specimen fusion
    created_at: Mapped[float] = mapped_column(Float)


class Line(Base):
    __tablename__ = "lines"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[float] = mapped_column(Float)


class Camera(Base):
    __tablename__ = "cameras"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    line_id: Mapped[int] = mapped_column(ForeignKey("lines.id"))
    created_at: Mapped[float] = mapped_column(Float)


class InspectionResult(Base):
    __tablename__ = "inspection_results"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    camera_id: Mapped[int] = mapped_column(ForeignKey("cameras.id"))
    frame_id: Mapped[int] = mapped_column(BigInteger)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    line_id: Mapped[int] = mapped_column(ForeignKey("lines.id"))
    specimen_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    view: Mapped[str | None] = mapped_column(String(64), nullable=True)
    captured_at: Mapped[float] = mapped_column(Float)      # camera timestamp
    inferred_at: Mapped[float] = mapped_column(Float)      # engine returned
    stored_at: Mapped[float] = mapped_column(Float)        # row written
    score: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    verdict: Mapped[str] = mapped_column(String(16))       # "ok" | "defect"
    model_version: Mapped[str] = mapped_column(String(64)) # registry version, or "zero-shot"
    engine: Mapped[str] = mapped_column(String(32))        # onnx | torch | triton | zero-shot
    infer_ms: Mapped[float] = mapped_column(Float)         # engine time for its batch
    latency_ms: Mapped[float] = mapped_column(Float)       # capture -> stored
    batch_size: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    defect_area_px: Mapped[int] = mapped_column(Integer, default=0)
    false_alarm: Mapped[bool] = mapped_column(Boolean, default=False)  # operator override
    # stored while the camera had an open drift alarm (or between its onset and opening): the verdict came
    # from a model the camera had drifted away from; such frames never become training data
    drifted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    mask: Mapped[Mask | None] = relationship(back_populates="result", uselist=False, cascade="all, delete-orphan")

    __table_args__ = (
        UniqueConstraint("camera_id", "frame_id", name="uq_result_camera_frame"),
        Index("ix_result_product_time", "product_id", "captured_at"),
        Index("ix_result_time", "captured_at"),
        Index("ix_result_verdict_time", "verdict", "captured_at"),
        Index("ix_result_specimen", "product_id", "specimen_id"),
    )


class Mask(Base):
    __tablename__ = "masks"
    result_id: Mapped[int] = mapped_column(ForeignKey("inspection_results.id", ondelete="CASCADE"), primary_key=True)
    png: Mapped[bytes] = mapped_column(LargeBinary)   # single-channel 8-bit PNG, 0/255, frame size
    heat_png: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # 8-bit anomaly map (0..255 = 0..2x thr)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    result: Mapped[InspectionResult] = relationship(back_populates="mask")


class FrameImage(Base):
    """Encoded frames kept for flagged results (dashboard full view, false-alarm relabelling)."""

    __tablename__ = "frame_images"
    result_id: Mapped[int] = mapped_column(ForeignKey("inspection_results.id", ondelete="CASCADE"), primary_key=True)
    encoding: Mapped[str] = mapped_column(String(8))
    data: Mapped[bytes] = mapped_column(LargeBinary)


class TrainingSample(Base):
    """Accumulated normal data per product: clearly-normal frames and operator false alarms."""

    __tablename__ = "training_samples"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    result_id: Mapped[int | None] = mapped_column(ForeignKey("inspection_results.id", ondelete="SET NULL"), nullable=True)
    sha256: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))  # clear_normal | false_alarm | seed
    encoding: Mapped[str] = mapped_column(String(8))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float)
    __table_args__ = (
        UniqueConstraint("product_id", "sha256", name="uq_sample_product_sha"),
        Index("ix_sample_product_time", "product_id", "created_at"),
    )


class ModelVersion(Base):
    __tablename__ = "model_versions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    version: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # candidate | active | retired | rejected
    path: Mapped[str] = mapped_column(Text)          # model directory
    checksum: Mapped[str] = mapped_column(String(64))  # sha256 of the weights file, verified at load
    backbone: Mapped[str] = mapped_column(String(64))
    threshold: Mapped[float] = mapped_column(Float)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    data_snapshot: Mapped[dict] = mapped_column(JSON, default=dict)
    parent_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    promoted_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    __table_args__ = (UniqueConstraint("product_id", "version", name="uq_model_product_version"),)


class Specimen(Base):
    """One physical part seen by several cameras / lights, decided from its views' results."""

    __tablename__ = "specimens"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    specimen_id: Mapped[str] = mapped_column(String(128))
    expected_views: Mapped[int] = mapped_column(Integer)
    received_views: Mapped[int] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    verdict: Mapped[str] = mapped_column(String(16))
    fusion: Mapped[str] = mapped_column(String(16))  # max | topk_mean
    complete: Mapped[bool] = mapped_column(Boolean)
    first_seen_at: Mapped[float] = mapped_column(Float)
    decided_at: Mapped[float] = mapped_column(Float)
    result_ids: Mapped[list] = mapped_column(JSON, default=list)
    __table_args__ = (
        UniqueConstraint("product_id", "specimen_id", name="uq_specimen_product_id"),
        Index("ix_specimen_time", "decided_at"),
    )


class JobLock(Base):
    """One retraining job per product at a time, across processes and hosts."""

    __tablename__ = "job_locks"
    name: Mapped[str] = mapped_column(String(160), primary_key=True)
    holder: Mapped[str] = mapped_column(String(160))
    acquired_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)


class JobRun(Base):
    __tablename__ = "job_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    product: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(32))      # retrain | prune | ...
    status: Mapped[str] = mapped_column(String(16))    # running | ok | failed | skipped
    started_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)


class ConsumerStat(Base):
    """Periodic consumer health snapshots (throughput, batch size, lag, DLQ) for the dashboard."""

    __tablename__ = "consumer_stats"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    consumer: Mapped[str] = mapped_column(String(160))
    at: Mapped[float] = mapped_column(Float)
    frames: Mapped[int] = mapped_column(Integer)          # frames stored since the last snapshot
    seconds: Mapped[float] = mapped_column(Float)         # length of that interval
    mean_batch: Mapped[float] = mapped_column(Float)
    p50_latency_ms: Mapped[float] = mapped_column(Float)
    p99_latency_ms: Mapped[float] = mapped_column(Float)
    lag: Mapped[int] = mapped_column(Integer)
    dlq_total: Mapped[int] = mapped_column(Integer)
    engine: Mapped[str] = mapped_column(String(64))
    engine_ok: Mapped[bool] = mapped_column(Boolean)
    __table_args__ = (Index("ix_consumer_stats_at", "at"),)


class DriftAlarm(Base):
    """A camera whose frames no longer look like the active model's normal (light, position, lot).

    At most one *open* alarm per (product, camera): a unique partial index, so several consumers
    seeing the same drift insert-or-nothing one row (PostgreSQL and SQLite both honour it).
    """

    __tablename__ = "drift_alarms"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    product: Mapped[str] = mapped_column(String(128))
    camera: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))          # open | resolved | dismissed
    kinds: Mapped[str] = mapped_column(String(128))          # comma list: score,brightness,sharpness,position
    opened_at: Mapped[float] = mapped_column(Float)
    onset_at: Mapped[float] = mapped_column(Float)           # capture time of the first frame of the window
    onset_frame_id: Mapped[int] = mapped_column(BigInteger)
    model_version: Mapped[str] = mapped_column(String(64))
    evidence: Mapped[dict] = mapped_column(JSON, default=dict)
    rebaseline_since: Mapped[float | None] = mapped_column(Float, nullable=True)  # operator: "new normal since T"
    rebaseline_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    resolved_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    resolution: Mapped[str | None] = mapped_column(Text, nullable=True)
    closed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)  # who dismissed / re-baselined
    __table_args__ = (
        Index("uq_drift_open_camera", "product", "camera", unique=True,
              postgresql_where=text("status = 'open'"), sqlite_where=text("status = 'open'")),
        Index("ix_drift_product_status", "product", "status"),
    )


class DriftReference(Base):
    """A camera's image reference (brightness, sharpness, mean image for alignment) from its first frames."""

    __tablename__ = "drift_references"
    camera: Mapped[str] = mapped_column(String(128), primary_key=True)
    product: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[float] = mapped_column(Float)
    stats: Mapped[dict] = mapped_column(JSON, default=dict)
    image_png: Mapped[bytes] = mapped_column(LargeBinary)    # mean grey frame at the check size


class DriftFrame(Base):
    """Frames seen while a drift alarm is open: the candidate training set of a re-baseline, kept apart
    from ``training_samples`` so shifted frames never become training data unless an operator says so."""

    __tablename__ = "drift_frames"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    alarm_id: Mapped[int] = mapped_column(BigId, ForeignKey("drift_alarms.id", ondelete="CASCADE"))
    product: Mapped[str] = mapped_column(String(128))
    camera: Mapped[str] = mapped_column(String(128))
    frame_id: Mapped[int] = mapped_column(BigInteger)
    captured_at: Mapped[float] = mapped_column(Float)
    sha256: Mapped[str] = mapped_column(String(64))
    encoding: Mapped[str] = mapped_column(String(8))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    __table_args__ = (
        UniqueConstraint("product", "sha256", name="uq_drift_frame_product_sha"),
        Index("ix_drift_frame_product_time", "product", "captured_at"),
    )


class DefectFamily(Base):
    """An unsupervised group of similar flagged regions of one product (inference/families.py);
    ``name`` is the operator's and sticks to every region that joins the family later."""

    __tablename__ = "defect_families"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    product: Mapped[str] = mapped_column(String(128))
    family: Mapped[int] = mapped_column(Integer)              # id within the product
    name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    centroid: Mapped[list] = mapped_column(JSON, default=list)
    count: Mapped[int] = mapped_column(Integer)
    threshold: Mapped[float] = mapped_column(Float)          # the product's cosine-distance threshold
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    __table_args__ = (UniqueConstraint("product", "family", name="uq_family_product_family"),)


class DefectRegion(Base):
    """One connected component of a flagged frame's mask, its embedding and its family."""

    __tablename__ = "defect_regions"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    result_id: Mapped[int] = mapped_column(BigId, ForeignKey("inspection_results.id", ondelete="CASCADE"))
    product: Mapped[str] = mapped_column(String(128))
    region: Mapped[int] = mapped_column(Integer)             # rank by area within the frame
    family: Mapped[int] = mapped_column(Integer)
    area_px: Mapped[int] = mapped_column(Integer)
    x: Mapped[int] = mapped_column(Integer)
    y: Mapped[int] = mapped_column(Integer)
    w: Mapped[int] = mapped_column(Integer)
    h: Mapped[int] = mapped_column(Integer)
    cx: Mapped[float] = mapped_column(Float)                 # centroid, fraction of the frame width
    cy: Mapped[float] = mapped_column(Float)
    captured_at: Mapped[float] = mapped_column(Float)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)    # float16 vector
    __table_args__ = (
        UniqueConstraint("result_id", "region", name="uq_region_result_region"),
        Index("ix_region_product_family_time", "product", "family", "captured_at"),
    )
