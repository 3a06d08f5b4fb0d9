import json

import numpy as np
import torch

from inference.model.inp_former import InpConfig
from inference.model_dir import load_model_dir
from training.train import TrainConfig, calibrate, split_holdout, train


def images(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (48, 72, 3), dtype=np.uint8) for _ in range(n)]


def cfg(**kw):
    m = InpConfig(backbone="random_tiny", input_hw=(64, 64), width=32, head_dim=16, decoder_blocks=2)
    return TrainConfig(**{"model": m, "batch_size": 4, "train_tokens": 16, "checkpoint_every": 3, **kw})


def weights(path):
    return torch.load(path / "weights.pt", weights_only=True)


def test_same_seed_same_weights_and_a_complete_model_dir(tmp_path):
    ims = images()
    a = train(ims, cfg(), tmp_path / "a", iters=6, seed=3, progress=False)
    b = train(ims, cfg(), tmp_path / "b", iters=6, seed=3, progress=False)
    c = train(ims, cfg(), tmp_path / "c", iters=6, seed=4, progress=False)
    wa, wb, wc = weights(a), weights(b), weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    lm = load_model_dir(a)
    assert lm.config["seed"] == 3 and lm.config["calibration_images"] == 2
    assert lm.calibration["threshold"] > 0 and not (a / "checkpoint.pt").exists()


def test_resume_continues_to_the_same_result(tmp_path):
    ims = images()
    full = train(ims, cfg(), tmp_path / "full", iters=6, seed=0, progress=False)
    part = tmp_path / "part"
    c = cfg()
    train(ims, c, part, iters=3, seed=0, progress=False)  # leaves no checkpoint: simulate a crash mid-run
    # run 6 iters but interrupt after the 3-iteration checkpoint by raising from the optimiser
    import training.train as tt

    calls = {"n": 0}
    real_step = tt.StableAdamW.step

    def crashing_step(self, closure=None):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_step(self, closure)

    tt.StableAdamW.step = crashing_step
    try:
        try:
            train(ims, cfg(), part, iters=6, seed=0, progress=False)
        except KeyboardInterrupt:
            pass
    finally:
        tt.StableAdamW.step = real_step
    assert torch.load(part / "checkpoint.pt", weights_only=True)["iter"] == 3
    train(ims, cfg(), part, iters=6, seed=0, progress=False)
    wf, wp = weights(full), weights(part)
    assert all(torch.equal(wf[k], wp[k]) for k in wf)


def test_few_shot_and_feature_cache(tmp_path):
    out = train(images(8), cfg(few_shot=2, aug_copies=3, cache_dir=str(tmp_path / "cache")), tmp_path / "m",
                iters=2, seed=0, progress=False)
    conf = json.loads((out / "config.json").read_text())
    assert conf["train_images"] == 2 and conf["train_feature_rows"] == 8
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2  # fit (augmented) + calibration features


def test_calibration_threshold_is_a_quantile_times_margin():
    cal = calibrate(np.linspace(0, 1, 101), 0.99, 1.1)
    assert cal["threshold"] == __import__("pytest").approx(0.99 * 1.1)
    assert cal["quantiles"]["p50"] == __import__("pytest").approx(0.5)


def test_split_holdout_is_deterministic_and_disjoint():
    ims = images(20)
    fit, held = split_holdout(ims, 0.15, 0)
    fit2, held2 = split_holdout(ims, 0.15, 0)
    assert len(held) == 3 and len(fit) == 17
    assert all(a is b for a, b in zip(held, held2))


def test_device_is_a_run_setting_not_part_of_the_model(tmp_path):
    """``device`` picks where training runs; the same run on the CPU named explicitly is bit-identical
    and the model dir holds CPU tensors either way (and no device in the fingerprint or weights)."""
    ims = images()
    a = train(ims, cfg(), tmp_path / "a", iters=4, seed=1, progress=False)
    b = train(ims, cfg(device="cpu"), tmp_path / "b", iters=4, seed=1, progress=False)
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert all(v.device.type == "cpu" for v in wb.values())


def test_train_cli_rejects_a_device_torch_cannot_use():
    import pytest

    from lineinspect.errors import ConfigError
    from training.cli import _device

    assert _device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="not a torch device"):
        _device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            _device("cuda")


def test_memory_model_trains_saves_and_reloads_with_its_bank(tmp_path):
    from dataclasses import replace

    c = cfg(iters=3)
    c = replace(c, model=replace(c.model, token_stride=8, memory_size=32))
    out = train(images(10), c, tmp_path / "m", seed=0, progress=False)
    lm = load_model_dir(out)
    mem = lm.module.head.memory
    assert mem.bank.shape == (32, 16 + 24) and mem.bank.abs().sum() > 0
    assert torch.allclose(mem.bank_sq, (mem.bank ** 2).sum(1))
    assert float(mem.mem_stats[1]) > 0 and float(mem.rec_stats[1]) > 0
    assert len({tuple(r) for r in mem.bank.tolist()}) == 32  # coreset rows are distinct
    x = torch.rand(2, 3, 64, 64)
    amap, score = lm.module(x)
    assert amap.shape == (2, 64, 64) and torch.isfinite(score).all()


def test_memory_bank_from_all_normals_keeps_the_fit_only_statistics(tmp_path):
    """memory_bank "all": the held-out normals join the bank only after they set the map statistics and
    the threshold against the fit-only bank; "fit" keeps the fit-only bank (models before the field)."""
    from dataclasses import replace

    import pytest

    from training.features import cached_features
    from training.patchcore import greedy_coreset, memory_rows

    ims = images(10)
    base = cfg(iters=3)
    base = replace(base, model=replace(base.model, token_stride=8, memory_size=32))
    fit_dir = train(ims[:8], replace(base, memory_bank="fit"), tmp_path / "fit", seed=0, progress=False,
                    calibration_images=ims[8:])
    all_dir = train(ims[:8], replace(base, memory_bank="all"), tmp_path / "all", seed=0, progress=False,
                    calibration_images=ims[8:])
    f, a = load_model_dir(fit_dir), load_model_dir(all_dir)
    fm, am = f.module.head.memory, a.module.head.memory
    assert torch.equal(fm.mem_stats, am.mem_stats) and torch.equal(fm.rec_stats, am.rec_stats)
    assert f.calibration["threshold"] == a.calibration["threshold"]
    assert not torch.equal(fm.bank, am.bank)
    # the "all" bank is exactly the greedy coreset of the fit + held-out patches
    probe = a.module
    rows = memory_rows(torch.cat([cached_features(probe, ims[:8], None, memory=True)[0],
                                  cached_features(probe, ims[8:], None, memory=True)[0]]))
    want = rows[greedy_coreset(rows, 32, 0)]
    assert torch.allclose(am.bank + am.center, want, atol=1e-4)
    with pytest.raises(ValueError, match="memory_bank"):
        train(ims, replace(base, memory_bank="both"), tmp_path / "bad", seed=0, progress=False)


def test_memory_on_principal_axes_is_fitted_by_training(tmp_path):
    from dataclasses import replace

    c = cfg(iters=3)
    c = replace(c, model=replace(c.model, token_stride=8, memory_size=32, memory_dims=8))
    lm = load_model_dir(train(images(10), c, tmp_path / "p", seed=0, progress=False))
    mem = lm.module.head.memory
    assert mem.bank.shape == (32, 8) and torch.allclose(mem.proj.t() @ mem.proj, torch.eye(8), atol=1e-4)
    amap, score = lm.module(torch.rand(2, 3, 64, 64))
    assert amap.shape == (2, 64, 64) and torch.isfinite(score).all()
