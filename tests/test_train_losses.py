"""Each loss against its formula, on hand-made tensors."""

import math

import pytest
import torch

from rlaif.train.losses import bradley_terry_loss, dpo_loss


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_bradley_terry_plain_margin_and_centering():
    rc, rr = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.0])
    plain = bradley_terry_loss(rc, rr)
    assert plain.tolist() == pytest.approx([-math.log(sig(1.5)), -math.log(sig(-2.0))], rel=1e-6)
    m = torch.tensor([1.0, 0.0])
    with_margin = bradley_terry_loss(rc, rr, margin=m)
    assert with_margin.tolist() == pytest.approx([-math.log(sig(0.5)), -math.log(sig(-2.0))], rel=1e-6)
    centered = bradley_terry_loss(rc, rr, center_coef=0.01)
    assert centered.tolist() == pytest.approx(
        [-math.log(sig(1.5)) + 0.01 * 2.5 ** 2, -math.log(sig(-2.0)) + 0.01 * 0.0 ** 2], rel=1e-6)


# policy chosen, policy rejected, ref chosen, ref rejected -> h = (pc - rc) - (pr - rr)
PC, PR, RC, RR = torch.tensor([-10.0, -4.0]), torch.tensor([-12.0, -3.0]), torch.tensor([-11.0, -5.0]), torch.tensor([-11.5, -2.0])
H = [(-10 + 11) - (-12 + 11.5), (-4 + 5) - (-3 + 2)]  # [1.5, 2.0]


def test_dpo_sigmoid_and_cdpo():
    beta = 0.5
    got = dpo_loss(PC, PR, RC, RR, beta=beta)
    assert got.tolist() == pytest.approx([-math.log(sig(beta * h)) for h in H], rel=1e-6)
    eps = 0.1
    got = dpo_loss(PC, PR, RC, RR, beta=beta, label_smoothing=eps)
    want = [-(1 - eps) * math.log(sig(beta * h)) - eps * math.log(sig(-beta * h)) for h in H]
    assert got.tolist() == pytest.approx(want, rel=1e-6)


def test_dpo_robust():
    beta, eps = 0.2, 0.25
    got = dpo_loss(PC, PR, RC, RR, beta=beta, loss_type="robust", label_smoothing=eps)
    want = [((1 - eps) * -math.log(sig(beta * h)) - eps * -math.log(sig(-beta * h))) / (1 - 2 * eps) for h in H]
    assert got.tolist() == pytest.approx(want, rel=1e-6)
    # with eps = 0 it is plain DPO
    assert torch.allclose(dpo_loss(PC, PR, RC, RR, 0.2, "robust"), dpo_loss(PC, PR, RC, RR, 0.2))
    with pytest.raises(ValueError):
        dpo_loss(PC, PR, RC, RR, 0.2, "robust", label_smoothing=0.5)


def test_dpo_hinge():
    beta = 0.6
    got = dpo_loss(PC, PR, RC, RR, beta=beta, loss_type="hinge")
    assert got.tolist() == pytest.approx([max(0.0, 1 - beta * h) for h in H], rel=1e-6)


def test_dpo_ipo_is_length_normalised():
    beta = 0.1
    nc, nr = torch.tensor([2.0, 4.0]), torch.tensor([5.0, 1.0])
    got = dpo_loss(PC, PR, RC, RR, beta=beta, loss_type="ipo", chosen_tokens=nc, rejected_tokens=nr)
    want = []
    for i in range(2):
        h = (PC[i] - RC[i]).item() / nc[i].item() - (PR[i] - RR[i]).item() / nr[i].item()
        want.append((h - 1 / (2 * beta)) ** 2)
    assert got.tolist() == pytest.approx(want, rel=1e-6)

