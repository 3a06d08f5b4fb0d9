"""The model directory's one owner: read, write, stamp, describe, verify and migrate its metadata.

    weights.pt        state dict of the learnable head (written by inference.model_dir with torch)
    config.json       format version, architecture, backbone identity, input size, preprocessing, version
    calibration.json  normal-score statistics and the image ``threshold``
    checksums.json    sha256 of EVERY other file of the directory (weights, config, calibration, the
                      ONNX export and its sidecars), verified before a version is served
    model.onnx(.json) / model.int8.onnx(.json): exports, added to checksums.json when written

No other module opens config.json, calibration.json or checksums.json. This module imports no
torch and nothing from inference/, storage/ or training/, so all of them can use it.

Formats (``config.json: format_version``), upgraded in memory by :func:`migrate` on read:
  * 1: checksums.json covers weights.pt only; ``model`` may lack ``feature_norm`` (a bool
    ``standardize`` instead), ``map_stride`` and ``map_metric``. Still loads, with a warning that
    only the weights can be verified.
  * 2: checksums.json covers every file. A ``model`` with an extrinsic memory (``memory_size`` > 0)
    but no ``memory_k`` was written before that field: it means k = 1 (the new default is 3).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lineinspect.errors import ConfigError
from lineinspect.files import file_sha256
from lineinspect.logs import kv

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
SUPPORTED_FORMATS = (1, 2)
# model-config keys of older formats that :func:`migrate` reads and a reader may ignore (format 1's bool
# ``standardize`` became ``feature_norm``); any other key a build does not know means a newer writer
LEGACY_MODEL_KEYS = frozenset({"standardize"})
WEIGHTS = "weights.pt"
CONFIG = "config.json"
CALIBRATION = "calibration.json"
CHECKSUMS = "checksums.json"
REQUIRED = (WEIGHTS, CONFIG, CALIBRATION, CHECKSUMS)
# Never part of a model: scratch files of atomic writes, export locks, training checkpoints.
_SKIP_SUFFIXES = (".tmp", ".lock")
_SKIP_NAMES = (CHECKSUMS, "checkpoint.pt")


class ModelDirError(ConfigError):
    """A model directory is missing files, has an unknown format or fails its checksum."""


@dataclass(frozen=True)
class Description:
    """What the registry and engines need to know about a model directory, without torch."""

    version: str | None
    product: str | None
    threshold: float
    backbone: str
    input_hw: tuple[int, int] | None
    weights_sha256: str
    format_version: int


# --- reading -----------------------------------------------------------------------------------

def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelDirError(f"{path.parent} is not a model directory: {path.name} is missing") from None
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"{path}: unreadable JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ModelDirError(f"{path}: expected a JSON object")
    return obj


def read_config(path: str | Path) -> dict[str, Any]:
    """config.json, migrated to the current format (see :func:`migrate`)."""
    return migrate(_read_json(Path(path) / CONFIG), Path(path))


def read_calibration(path: str | Path) -> dict[str, Any]:
    calib = _read_json(Path(path) / CALIBRATION)
    if "threshold" not in calib:
        raise ModelDirError(f"{path}/{CALIBRATION} has no threshold")
    return calib


def read_checksums(path: str | Path) -> dict[str, str]:
    return {str(k): str(v) for k, v in _read_json(Path(path) / CHECKSUMS).items()}


def migrate(config: dict[str, Any], where: Path | None = None) -> dict[str, Any]:
    """Upgrade a config of any supported format to :data:`FORMAT_VERSION` (in memory)."""
    fmt = config.get("format_version")
    if fmt not in SUPPORTED_FORMATS:
        raise ModelDirError(f"{where or 'model'}: model format {fmt!r} is not supported "
                            f"(this build reads formats {SUPPORTED_FORMATS}); retrain or upgrade")
    out = dict(config)
    model = dict(out.get("model") or {})
    if fmt == 1:
        if "feature_norm" not in model:  # format 1: a bool `standardize` (absent = raw features)
            model["feature_norm"] = "zscore" if model.get("standardize", False) else "none"
        model.setdefault("map_stride", 1)  # format 1 blurred and scored the map at full input size
        model.setdefault("map_metric", "cos")  # and measured plain cosine distance
        out["model"] = model
        out["format_version"] = FORMAT_VERSION
        out["migrated_from"] = fmt
    if model.get("memory_size") and "memory_k" not in model:
        # an extrinsic memory written before ``memory_k`` existed scored by its single nearest entry
        model["memory_k"] = 1
        out["model"] = model
    return out


def describe(path: str | Path) -> Description:
    """Version, threshold, backbone name and input size of a model directory (not verified)."""
    path = Path(path)
    cfg = read_config(path)
    calib = read_calibration(path)
    bb = cfg.get("backbone")
    backbone = bb.get("name") if isinstance(bb, dict) else bb
    backbone = backbone or (cfg.get("model") or {}).get("backbone")
    hw = cfg.get("input_hw") or (cfg.get("model") or {}).get("input_hw")
    sums = read_checksums(path) if (path / CHECKSUMS).is_file() else {}
    return Description(version=cfg.get("version"), product=cfg.get("product"), threshold=float(calib["threshold"]),
                       backbone=str(backbone or "unknown"),
                       input_hw=(int(hw[0]), int(hw[1])) if hw and len(hw) == 2 else None,
                       weights_sha256=sums.get(WEIGHTS, ""), format_version=int(cfg.get("migrated_from",
                                                                                       cfg["format_version"])))


# --- writing -----------------------------------------------------------------------------------

def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (tmp + rename): a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write(path: str | Path, config: dict[str, Any], calibration: dict[str, Any]) -> None:
    """Write config.json (stamped with the current format) and calibration.json, then record the
    checksums of every file (the weights must already be in place)."""
    if "threshold" not in calibration:
        raise ValueError("calibration must contain a 'threshold'")
    path = Path(path)
    write_json(path / CONFIG, {**config, "format_version": FORMAT_VERSION})
    write_json(path / CALIBRATION, calibration)
    record_checksums(path)


def stamp(path: str | Path, product: str, version: str) -> None:
    """Write the registry version and product into config.json (engines report the version on every
    row) and re-record the checksums, so the rewritten config still verifies."""
    path = Path(path)
    cfg = _read_json(path / CONFIG)
    cfg.update({"version": version, "product": product})
    write_json(path / CONFIG, cfg)
    record_checksums(path)


def _model_files(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")
                  if p.is_file() and p.name not in _SKIP_NAMES and not p.name.endswith(_SKIP_SUFFIXES))


def record_checksums(path: str | Path, files: list[str] | None = None) -> dict[str, str]:
    """(Re)record the sha256 of ``files`` (default: every file of the directory) in checksums.json;
    entries of other files are kept. Used after writing and after adding an export."""
    path = Path(path)
    old = read_checksums(path) if (path / CHECKSUMS).is_file() and files is not None else {}
    names = _model_files(path) if files is None else files
    sums = {**old, **{n: file_sha256(path / n) for n in names}}
    write_json(path / CHECKSUMS, sums)
    return sums


# --- verifying ---------------------------------------------------------------------------------

def is_export(name: str) -> bool:
    """ONNX exports and their sidecars: derived from the weights, rebuilt by the exporter."""
    return name.endswith((".onnx", ".onnx.json"))


def verify(path: str | Path, exports: bool = True) -> str:
    """Check every file listed in checksums.json (and that the required files exist); returns the
    weights' sha256. Raises :class:`ModelDirError` naming the first file that fails.

    ``exports=False`` skips the ONNX exports: only the exporter uses it, because it is about to
    rebuild a stale or tampered export from the verified weights (and records the new checksums).

    A format-1 directory whose checksums cover weights.pt only still loads, with a warning: its
    config and calibration cannot be verified."""
    path = Path(path)
    missing = [f for f in REQUIRED if not (path / f).is_file()]
    if missing:
        raise ModelDirError(f"{path} is not a model directory: missing {', '.join(missing)}")
    sums = read_checksums(path)
    if WEIGHTS not in sums:
        raise ModelDirError(f"{path}/{CHECKSUMS} records no checksum for {WEIGHTS}")
    for name, want in sorted(sums.items()):
        if not exports and is_export(name):
            continue
        target = (path / name).resolve()
        if path.resolve() not in target.parents:
            raise ModelDirError(f"{path}/{CHECKSUMS} names {name!r}, outside the model directory")
        if not target.is_file():
            raise ModelDirError(f"{path}/{name} is missing but recorded in {CHECKSUMS}")
        actual = file_sha256(target)
        if actual != want:
            raise ModelDirError(f"{path}/{name} fails its checksum (expected {want[:12]}..., got {actual[:12]}...): "
                                "the file is corrupt or was replaced; re-copy or retrain the model")
    unlisted = [f for f in _model_files(path) if f not in sums]
    if set(sums) == {WEIGHTS}:
        log.warning("legacy model directory: checksums.json covers weights.pt only; config and calibration are "
                    "not verified (re-save it to record every file)", extra=kv(path=str(path)))
    elif unlisted:
        log.warning("files in the model directory without a checksum are not trusted",
                    extra=kv(path=str(path), files=unlisted[:10]))
    return sums[WEIGHTS]


def read_verified(path: str | Path, exports: bool = True) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(migrated config, calibration, weights sha256) after :func:`verify`."""
    path = Path(path)
    actual = verify(path, exports=exports)
    return read_config(path), read_calibration(path), actual


def is_verified_file(path: str | Path, name: str) -> bool:
    """True when ``name`` is recorded in checksums.json and matches (exports are reused only then)."""
    path = Path(path)
    try:
        want = read_checksums(path).get(name)
    except ModelDirError:
        return False
    return want is not None and (path / name).is_file() and file_sha256(path / name) == want


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """An export's JSON sidecar (``model.onnx.json``), or None when absent or unreadable."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None
