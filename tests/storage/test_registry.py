from __future__ import annotations

import hashlib
import threading

import pytest

from lineinspect import model_meta
from storage.registry import ChecksumMismatch, ModelRegistry, RegistryError
from storage.store import ResultStore


@pytest.fixture()
def registry(db_url, tmp_path):
    store = ResultStore.open(db_url)
    yield ModelRegistry(store, tmp_path / "models")
    store.close()


def _model_dir(root, tag: str, config: dict | None = None, threshold: float = 0.5, meta: bool = True):
    """A model directory with stand-in weights; its metadata written by its owner (lineinspect.model_meta)."""
    d = root / f"trained-{tag}"
    d.mkdir(parents=True)
    (d / "weights.pt").write_bytes(f"weights {tag}".encode())
    if meta:
        model_meta.write(d, config or {}, {"threshold": threshold})
    return d


def _register(registry, tmp_path, tag: str, product: str = "bolt", **kw) -> str:
    return registry.register(product, _model_dir(tmp_path, tag), threshold=0.5, backbone="efficientnet_lite0",
                             metrics={"auroc": 0.9}, data_snapshot={"n_train": 10}, **kw)


def test_register_copies_the_folder_and_records_the_checksum(registry, tmp_path):
    v1 = _register(registry, tmp_path, "a")
    v2 = _register(registry, tmp_path, "b", parent_version=v1)
    assert (v1, v2) == ("v0001", "v0002")
    assert _register(registry, tmp_path, "c", product="nut") == "v0001"
    info = registry.get("bolt", "v0002")
    assert info.path == (tmp_path / "models" / "bolt" / "v0002").resolve()
    assert info.weights_path.read_bytes() == b"weights b" and (info.path / "config.json").exists()
    assert info.checksum == hashlib.sha256(b"weights b").hexdigest()
    assert (info.status, info.parent_version, info.metrics, info.data_snapshot) == (
        "candidate", "v0001", {"auroc": 0.9}, {"n_train": 10})
    assert (tmp_path / "trained-b").exists()  # copied, not moved
    assert [v.version for v in registry.list("bolt")] == ["v0001", "v0002"]
    assert len(registry.list()) == 3
    assert registry.active("bolt") is None


def test_register_move_and_explicit_version(registry, tmp_path):
    src = _model_dir(tmp_path, "m")
    assert registry.register("bolt", src, "v0007", threshold=1.0, backbone="x", move=True) == "v0007"
    assert not src.exists()
    assert _register(registry, tmp_path, "n") == "v0008"
    with pytest.raises(RegistryError, match="already registered"):
        registry.register("bolt", _model_dir(tmp_path, "o"), "v0007", threshold=1.0, backbone="x")
    assert not list((tmp_path / "models" / "bolt").glob(".incoming-*"))


@pytest.mark.parametrize("kw", [dict(version="7"), dict(status="active"), dict(product="../evil")])
def test_register_rejects_bad_arguments(registry, tmp_path, kw):
    kw = dict(kw)  # the parameter dict is shared between the sqlite and postgresql runs
    product = kw.pop("product", "bolt")
    with pytest.raises(RegistryError):
        registry.register(product, _model_dir(tmp_path, "z"), threshold=1.0, backbone="x", **kw)


def test_register_needs_weights(registry, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistryError, match="weights.pt"):
        registry.register("bolt", tmp_path / "empty", threshold=1.0, backbone="x")


def test_promote_retires_the_previous_and_rollback_walks_back(registry, tmp_path):
    v1, v2, v3 = (_register(registry, tmp_path, t) for t in "abc")
    registry.promote("bolt", v1)
    registry.promote("bolt", v2)
    assert registry.active("bolt").version == v2
    assert {v.version: v.status for v in registry.list("bolt")} == {v1: "retired", v2: "active", v3: "candidate"}
    registry.promote("bolt", v3)
    assert registry.active_versions()["bolt"].version == v3
    assert registry.rollback("bolt").version == v2
    statuses = {v.version: (v.status, v.reason) for v in registry.list("bolt")}
    assert statuses[v3] == ("retired", f"rolled back to {v2}") and statuses[v2][0] == "active"
    assert registry.rollback("bolt").version == v1
    with pytest.raises(RegistryError, match="no earlier"):
        registry.rollback("bolt")
    assert [v.status for v in registry.list("bolt")].count("active") == 1
    registry.promote("bolt", v3)  # a retired version can come back
    assert registry.active("bolt").version == v3


def test_reject_and_errors(registry, tmp_path):
    v1, v2 = (_register(registry, tmp_path, t) for t in "ab")
    registry.promote("bolt", v1)
    rejected = registry.reject("bolt", v2, "AUROC below the active version")
    assert (rejected.status, rejected.reason) == ("rejected", "AUROC below the active version")
    with pytest.raises(RegistryError, match="rejected"):
        registry.promote("bolt", v2)
    with pytest.raises(RegistryError, match="active"):
        registry.reject("bolt", v1, "no")
    with pytest.raises(RegistryError, match="no version"):
        registry.promote("bolt", "v0099")
    with pytest.raises(RegistryError, match="no active"):
        registry.rollback("nut")


def test_verify_catches_a_changed_weights_file(registry, tmp_path):
    v1 = _register(registry, tmp_path, "a")
    info = registry.get("bolt", v1)
    registry.verify(info)
    info.weights_path.write_bytes(b"tampered")
    with pytest.raises(ChecksumMismatch, match="sha256"):
        registry.verify(info)
    with pytest.raises(ChecksumMismatch):
        registry.promote("bolt", v1)  # never activate a corrupted model
    assert registry.active("bolt") is None
    info.weights_path.unlink()
    with pytest.raises(ChecksumMismatch, match="missing"):
        registry.verify(info)


def test_concurrent_registrations_get_distinct_versions(registry, tmp_path):
    dirs = [_model_dir(tmp_path, f"t{i}") for i in range(4)]
    out: list[str] = []
    errors: list[BaseException] = []

    def work(d) -> None:
        try:
            out.append(registry.register("bolt", d, threshold=1.0, backbone="x"))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(d,)) for d in dirs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(out) == ["v0001", "v0002", "v0003", "v0004"]
    assert {registry.get("bolt", v).weights_path.read_bytes() for v in out} == {f"weights t{i}".encode()
                                                                                 for i in range(4)}


def test_threshold_and_backbone_default_to_the_model_dir(registry, tmp_path):
    d = _model_dir(tmp_path, "j", {"backbone": {"name": "efficientnet_lite1", "weights_sha256": "ab"}}, 0.37)
    info = registry.get("bolt", registry.register("bolt", d))
    assert (info.threshold, info.backbone) == (0.37, "efficientnet_lite1")
    bare = _model_dir(tmp_path, "k", meta=False)
    with pytest.raises(RegistryError, match="threshold"):
        registry.register("bolt", bare, backbone="x")
