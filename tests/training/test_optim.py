import pytest
import torch

from training.optim import StableAdamW, warmup_cosine


def test_first_step_is_lr_sign_like_and_clipped_on_spikes():
    p = torch.nn.Parameter(torch.zeros(4))
    opt = StableAdamW([p], lr=0.1, weight_decay=0.0)
    p.grad = torch.tensor([1.0, -2.0, 3.0, 0.5])
    opt.step()  # Adam's first step ~ lr * sign(g); RMS ratio 1 -> no clipping
    assert torch.allclose(p.detach(), -0.1 * torch.sign(p.grad), atol=1e-6)
    q = torch.nn.Parameter(torch.zeros(4))
    opt = StableAdamW([q], lr=0.1, weight_decay=0.0)
    for _ in range(20):  # settle v on small gradients
        q.grad = torch.full((4,), 1e-3)
        opt.step()
    before = q.detach().clone()
    q.grad = torch.full((4,), 10.0)  # a spike 10^4 x the running scale
    opt.step()
    st = opt.state[q]
    t = st["step"]
    denom = (st["v_max"] / (1 - 0.999 ** t)).sqrt() + 1e-10
    plain = 0.1 * (st["m"] / (1 - 0.9 ** t)) / denom
    rms = float((q.grad / denom).pow(2).mean().sqrt())
    assert rms > 1.5
    assert torch.allclose(before - q.detach(), plain / rms, rtol=1e-4)  # update divided by the RMS ratio


def test_weight_decay_and_amsgrad_keep_max():
    p = torch.nn.Parameter(torch.ones(2))
    opt = StableAdamW([p], lr=0.1, weight_decay=0.5)
    p.grad = torch.tensor([2.0, 2.0])
    opt.step()
    v1 = opt.state[p]["v_max"].clone()
    p.grad = torch.tensor([0.0, 0.0])
    opt.step()
    assert torch.equal(opt.state[p]["v_max"], v1)


def test_warmup_then_cosine():
    assert warmup_cosine(0, 1000, 1e-3, 1e-4, 100) == pytest.approx(1e-5)
    assert warmup_cosine(99, 1000, 1e-3, 1e-4, 100) == pytest.approx(1e-3)
    assert warmup_cosine(100, 1000, 1e-3, 1e-4, 100) == pytest.approx(1e-3)
    assert warmup_cosine(550, 1000, 1e-3, 1e-4, 100) == pytest.approx(5.5e-4)
    assert warmup_cosine(1000, 1000, 1e-3, 1e-4, 100) == pytest.approx(1e-4)
    vals = [warmup_cosine(i, 1000) for i in range(100, 1001)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))
