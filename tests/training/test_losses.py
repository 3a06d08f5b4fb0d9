import pytest
import torch

from training.losses import coherence_loss, global_cosine_loss, scale_grad, soft_mining_weights


def test_global_cosine_loss_hand_cases():
    torch.manual_seed(0)
    e = torch.randn(2, 4, 3, 3)
    assert float(global_cosine_loss([e], [e * 2.0], power=0)) == pytest.approx(0.0, abs=1e-6)
    assert float(global_cosine_loss([e], [-e], power=0)) == pytest.approx(2.0, abs=1e-6)
    assert float(global_cosine_loss([e, e], [e, -e], power=3)) == pytest.approx(1.0, abs=1e-6)


def test_scale_grad_keeps_value_and_scales_gradient():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = scale_grad(x, torch.tensor([0.5, 3.0]))
    assert torch.equal(y, x.detach())
    y.sum().backward()
    assert torch.allclose(x.grad, torch.tensor([0.5, 3.0]))


def test_soft_mining_scales_each_tokens_gradient_by_relative_distance_cubed():
    torch.manual_seed(0)
    e = torch.randn(1, 8, 2, 2)
    d = (e + 0.5 * torch.randn(1, 8, 2, 2)).requires_grad_(True)
    w = soft_mining_weights(e, d, 3.0)
    dist = 1 - torch.nn.functional.cosine_similarity(e, d.detach(), dim=1)
    assert torch.allclose(w[:, 0], (dist / dist.mean()) ** 3)
    global_cosine_loss([e], [d], power=3.0).backward()
    g_mined = d.grad.clone()
    d.grad = None
    global_cosine_loss([e], [d], power=0.0).backward()
    assert torch.allclose(g_mined, d.grad * w, atol=1e-7)


def test_coherence_loss():
    p = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    t = torch.tensor([[[2.0, 0.0], [0.0, 3.0]]])
    assert float(coherence_loss(t, p)) == pytest.approx(0.0, abs=1e-6)
    t2 = torch.tensor([[[-1.0, 0.0]]])  # nearest INP is orthogonal -> distance 1
    assert float(coherence_loss(t2, p)) == pytest.approx(1.0, abs=1e-6)
    assert float(coherence_loss(t, p, soft=True)) < 0.01


def test_scale_grad_keeps_the_value_exact_for_huge_weights():
    x = torch.tensor([1.0, -3.0, 0.25], requires_grad=True)
    y = scale_grad(x, torch.tensor([1e15, 1e-15, 7.0]))
    assert torch.equal(y, x.detach())
    y.sum().backward()
    assert torch.allclose(x.grad, torch.tensor([1e15, 1e-15, 7.0]))


def test_global_cosine_loss_value_is_unaffected_by_mining_on_any_input():
    for seed in range(20):  # a perfect group has d ~ 0, so d / mean d can be ~1e15
        torch.manual_seed(seed)
        e = torch.randn(2, 4, 3, 3)
        assert float(global_cosine_loss([e, e], [e, -e], power=3)) == pytest.approx(1.0, abs=1e-6)
