"""One typed settings object for every component.

Values come from (highest first) CLI flags, ``LINEINSPECT_*`` environment variables, an optional
``.env``-style file named by ``LINEINSPECT_ENV_FILE``, then the defaults below. The defaults are
the *embedded* deployment (SQLite, in-memory bus and cache) so ``lineinspect demo`` needs nothing.
Service URLs pick the implementation: ``kafka://`` vs ``memory://``, ``postgresql+psycopg://`` vs
``sqlite:///``, ``redis://`` vs ``memory://``, ``triton-grpc://`` / ``triton-http://`` vs
``local://onnx`` / ``local://torch``.

Secrets (passwords inside URLs, SASL credentials) are never logged: use :func:`redact_url`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lineinspect.errors import ConfigError
from lineinspect.redact import redact_url

__all__ = ["ConfigError", "Settings", "load_settings", "redact_url"]


def _default_home() -> Path:
    return Path(os.environ.get("LINEINSPECT_HOME", Path.cwd() / "var"))


class Settings(BaseSettings):
    """Everything a lineinspect process needs to know, passed down explicitly (no globals)."""

    model_config = SettingsConfigDict(
        env_prefix="LINEINSPECT_",
        env_file=os.environ.get("LINEINSPECT_ENV_FILE"),
        extra="ignore",
        validate_default=True,
    )

    # --- where things live -------------------------------------------------------------
    home: Path = Field(default_factory=_default_home, description="Working folder for embedded state.")
    data: Path = Field(default=Path("../shared/data"), description="MVTec-layout real data root.")
    models_dir: Path | None = Field(default=None, description="Model registry folder; default <home>/models.")

    # --- services (URL picks the implementation) ---------------------------------------
    bus_url: str = "memory://"
    db_url: str | None = Field(default=None, description="SQLAlchemy URL; default sqlite:///<home>/lineinspect.sqlite")
    cache_url: str = "memory://"
    engine_url: str = Field(default="local://auto", description="local://auto|onnx|onnx-int8|openvino|torch, triton-grpc://h:p, triton-http://h:p")

    # --- Kafka -------------------------------------------------------------------------
    topic_frames: str = "lineinspect.frames"
    topic_dlq: str = "lineinspect.frames.dlq"
    topic_partitions: int = 6
    consumer_group: str = "lineinspect-inference"
    max_message_bytes: int = 8 * 1024 * 1024
    kafka_max_poll_interval_ms: int = Field(
        default=60_000, ge=10_000,
        description="Longest a consumer may go between polls before the group drops it; also how long a rebalance "
                    "waits for a member that does not rejoin (Kafka's default, 300 s, let one stuck member stall a "
                    "whole group for 5 minutes). Raise it only for engines slower than a batch a minute.")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None

    # --- consumer ----------------------------------------------------------------------
    batch_max_records: int = 8
    batch_max_wait_ms: int = 50
    metrics_port: int = 0  # 0 = no HTTP metrics endpoint
    metrics_host: str = "127.0.0.1"
    max_frame_pixels: int = 40_000_000
    decode_oversample: float = Field(default=4.0, ge=1.0, description=(
        "JPEG frames are decoded at the largest DCT scale (1/2, 1/4, 1/8) whose output is a whole "
        "multiple of the model input on each side, or at least this multiple of it; 4 keeps image AUROC "
        "within 0.006 of a full decode on every real category over 3 seeds (2: within 0.003 on three, "
        "-0.029 on tire; benchmarks/RESULTS.md camera), 2 decodes 5 MP ~35 % faster, 1 = the coarsest scale that covers it"))
    decode_threads: int = Field(default=2, ge=1, le=64, description=(
        "Threads decoding one batch's frames (OpenCV releases the GIL). 2: a camera-scale JPEG's decode is a large "
        "share of a frame and the sink leaves a core free meanwhile (5 MP colour 0.79 -> 0.90 and 12 MP 0.86 -> "
        "1.06 of decode + model, means of quiet runs, benchmarks/RESULTS.md camera section); 1 = serial, on the polling thread"))
    decode_ahead: bool = Field(default=True, description=(
        "While a batch is scored, the next one (already fetched: the poll does not wait for it) is decoded by "
        "the decode threads, so decoding overlaps the engine instead of preceding it; at most one batch ahead. "
        "Camera section, 3 A/B runs, ratio to decode + model serial -> ahead: 5 MP colour 0.99 -> 1.11, mono "
        "0.92 -> 0.93, 12 MP 1.24 -> 1.25 (benchmarks/RESULTS.md). Costs one more batch of decoded frames in "
        "memory (full-resolution ones for a tiling product)"))
    keep_normal_margin: float = Field(default=0.8, description="score < margin*threshold counts as clearly normal")
    keep_normal_cap: int = 500
    keep_normal_every_s: float = Field(default=1.0, ge=0.0, allow_inf_nan=False, description=(
        "At most one clearly normal frame per camera and product per this many seconds of capture time becomes a "
        "training sample (the newest keep_normal_cap per product are kept): samples spread over a shift instead of "
        "the last minute, and a 10 frames/s camera writes a tenth of its normal frames instead of all of them. "
        "0 = every clearly normal frame"))
    keep_flagged_frames: bool = True

    # --- engines -----------------------------------------------------------------------
    threads: int = Field(default=0, description="Intra-op threads for local engines; 0 = all cores")
    engine_device: str = Field(default="cpu", pattern=r"^(cpu|cuda(:[0-9]+)?)$", description=(
        "torch device of local://torch engines; on cuda the consumer hands them the JPEG bytes and they decode "
        "on the GPU (nvJPEG), falling back to the CPU decode where it refuses a frame"))
    triton_http_port: int = 8000
    triton_grpc_port: int = 8001
    triton_metrics_port: int = 8002
    triton_max_batch: int = Field(default=16, ge=1, description="Triton dynamic batching: largest batch")
    triton_queue_delay_us: int = Field(default=2000, ge=0, description="Triton: longest wait to fill a batch")
    tile: bool = False

    # --- Redis -------------------------------------------------------------------------
    cache_ttl_s: int = 24 * 3600
    anomaly_stream_maxlen: int = 10_000

    # --- models ----------------------------------------------------------------------------
    # training.presets.PRESETS' names, repeated so that settings import nothing from training (a test keeps the two
    # equal)
    model_preset: Literal["fast", "accurate"] = Field(default="fast", description=(
        "Model recipe for `lineinspect train` (its --preset overrides it), the demo and a product's first "
        "retraining: fast = the pure INP-Former (~0.6x the encoder's ONNX Runtime rate, below the strongest kNN "
        "bank); accurate = + a paired memory of 1024 + 1024 normal patches (above the strongest kNN bank on all "
        "three metrics, ~0.41x). benchmarks/RESULTS.md, quality"))

    # --- retention / retraining ----------------------------------------------------------
    retention_days: float = 30.0
    threshold_quantile: float = 0.99
    zero_shot_min_normals: int = 50

    # --- zero-shot cold start (inference/engines/zero_shot.py) ----------------------------
    zero_shot_fallback: bool = Field(default=True, description="score products without an active model zero-shot")
    zero_shot_method: Literal["grnr", "inp"] = "grnr"
    zero_shot_model_dir: Path | None = Field(default=None, description="INP-Former trained on other products (method inp)")
    zero_shot_window: int = Field(default=200, description="recent scores per product for the zero-shot threshold")

    # --- multi-camera specimen fusion (inference/fusion.py) ---------------------------------
    fusion_default_views: int = Field(default=3, description="views per specimen when products.expected_views is unset")
    fusion_method: Literal["max", "topk_mean"] = "max"
    fusion_topk: int = 2
    fusion_timeout_s: float = Field(default=30.0, description="decide an incomplete specimen this long after its first view")

    # --- drift monitor (inference/drift.py) -------------------------------------------------
    drift_enabled: bool = Field(default=True, description="watch each camera for drift after its results are stored")
    drift_window: int = Field(default=30, ge=5, description="recent frames per camera the drift checks look at")
    drift_reference_frames: int = Field(default=30, ge=5, description="a camera's first frames that form its image reference")
    drift_score_ratio: float = Field(default=1.0, gt=0, description="alarm when the window's median score > ratio x calibration p99")
    drift_brightness_grey: float = Field(default=12.0, gt=0, description="least brightness change (grey levels, 0-255) that alarms")
    drift_sharpness_ratio: float = Field(default=1.6, gt=1, description="least sharpness change (x or / variance of Laplacian) that alarms")
    drift_position_pct: float = Field(default=3.0, gt=0, description="least part shift (% of the frame) that alarms")
    drift_min_std_errors: float = Field(default=4.0, gt=0, description="limits never tighter than this many standard errors of the camera's own variation")
    drift_confirm_frames: int = Field(default=3, ge=1, description="consecutive frames a check must breach before an alarm")
    families_enabled: bool = Field(default=False, description=(
        "embed flagged regions and group them into defect families; off by default: the families match the true "
        "defect types poorly so far, and the step (a second, batched encoder pass on flagged frames and the family "
        "writes) costs consumer throughput: 0.84x at a 12 % flag rate on 2 quiet CPU cores "
        "(benchmarks/RESULTS.md, families section)"))
    families_warmup: int = Field(default=30, ge=2, description="regions per product that set the family threshold")
    drift_keep_frames: int = Field(default=1000, ge=0, description="frames kept per open alarm for a re-baseline")

    # --- dashboard -----------------------------------------------------------------------
    dashboard_port: int = 8501
    dashboard_password: SecretStr | None = None

    log_level: str = "INFO"
    log_json: bool = False

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: Any) -> Any:
        """Secret fields may also come from ``LINEINSPECT_<FIELD>_FILE`` (Docker/K8s secrets)."""
        from lineinspect.secrets import fill_secret_files

        return fill_secret_files(data, [k for k, f in cls.model_fields.items() if "SecretStr" in str(f.annotation)])

    @field_validator("topic_partitions", "batch_max_records", "batch_max_wait_ms", "keep_normal_cap")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("must be > 0")
        return v

    @field_validator("bus_url")
    @classmethod
    def _bus(cls, v: str) -> str:
        if not (v.startswith("memory://") or v.startswith("kafka://")):
            raise ValueError("bus_url must start with memory:// or kafka://host:port[,host:port]")
        return v

    @field_validator("cache_url")
    @classmethod
    def _cache(cls, v: str) -> str:
        if not (v.startswith("memory://") or v.startswith("redis://") or v.startswith("rediss://")):
            raise ValueError("cache_url must start with memory://, redis:// or rediss://")
        return v

    @field_validator("engine_url")
    @classmethod
    def _engine(cls, v: str) -> str:
        ok = ("local://", "triton-grpc://", "triton-http://", "zero-shot://")
        if not v.startswith(ok):
            raise ValueError(f"engine_url must start with one of {ok}")
        return v

    # derived ----------------------------------------------------------------------------
    @property
    def resolved_models_dir(self) -> Path:
        return self.models_dir or (self.home / "models")

    @property
    def resolved_db_url(self) -> str:
        return self.db_url or f"sqlite:///{(self.home / 'lineinspect.sqlite').as_posix()}"

    @property
    def kafka_bootstrap(self) -> list[str]:
        if not self.bus_url.startswith("kafka://"):
            raise ConfigError(f"bus_url {self.bus_url!r} is not a kafka:// URL")
        return [h for h in self.bus_url[len("kafka://"):].strip("/").split(",") if h]

    def with_overrides(self, **kw: Any) -> Settings:
        """Return a copy with CLI overrides applied (``None`` means 'not given')."""
        data = {k: v for k, v in kw.items() if v is not None}
        if not data:
            return self
        from pydantic import ValidationError

        unknown = set(data) - set(type(self).model_fields)
        if unknown:
            raise ConfigError(f"unknown setting(s): {sorted(unknown)}")
        try:
            return type(self)(**{**self.model_dump(), **data})  # re-validated
        except ValidationError as exc:  # a bad command-line value: one readable error, never a traceback
            raise ConfigError("invalid configuration (command-line options):\n" + _explain(exc)) from None

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """pydantic's repr hook: URL passwords never reach a repr or a traceback."""
        for k, v in super().__repr_args__():
            yield k, (redact_url(v) if isinstance(v, str) and "://" in v else v)

    def safe_dict(self) -> dict[str, Any]:
        """Settings for logs: secrets masked, URL passwords redacted."""
        out: dict[str, Any] = {}
        for k, v in self.model_dump().items():
            if isinstance(v, SecretStr) or (v is not None and "password" in k):
                out[k] = "***" if v else None
            elif isinstance(v, str) and "://" in v:
                out[k] = redact_url(v)
            else:
                out[k] = str(v) if isinstance(v, Path) else v
        return out


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment, turning validation errors into a readable ConfigError."""
    from pydantic import ValidationError

    env_file = os.environ.get("LINEINSPECT_ENV_FILE") or None  # read now, not when the class was defined
    if env_file is not None:
        try:
            Path(env_file).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"LINEINSPECT_ENV_FILE names {env_file}, which does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"LINEINSPECT_ENV_FILE {env_file} cannot be read as UTF-8 text "
                              f"({type(exc).__name__})") from None
    try:
        s = Settings(_env_file=env_file)  # type: ignore[call-arg]  # pydantic-settings' init-time option
    except ValidationError as exc:
        raise ConfigError("invalid configuration (LINEINSPECT_* environment):\n" + _explain(exc)) from None
    return s.with_overrides(**overrides)


def _explain(exc: Any) -> str:
    """A pydantic ValidationError as one indented line per field (messages only: values may be secrets)."""
    return "\n".join(f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
