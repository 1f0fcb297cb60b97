"""rlaif.train.optim: the one AdamW of every trainer, fused where the device has it."""

from __future__ import annotations

import pytest
import torch

from rlaif.train.optim import CPU_CHOICE, adamw, implementation


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=gen)) for shape in ((16, 8), (8,), (3, 5, 7))]


def test_fused_on_cuda_and_the_measured_choice_on_cpu() -> None:
    params = _params()
    assert implementation(params, device="cuda") == {"fused": True}      # where they will train
    assert implementation(params, device=torch.device("cuda", 0)) == {"fused": True}
    assert implementation(params) == {CPU_CHOICE: True}                 # CPU tensors, no device named
    assert implementation([torch.zeros(3, dtype=torch.long)], device="cuda") == {CPU_CHOICE: True}


def test_every_trainer_gets_it(tiny_model_dir: str) -> None:
    """The offline trainers' make_optimizer (rm, dpo, sft) and the online one both build it."""
    from transformers import AutoModelForCausalLM

    from rlaif.train.config import RMConfig
    from rlaif.train.online.config import GRPOConfig
    from rlaif.train.online.setup import make_optimizer as online_optimizer
    from rlaif.train.runtime import make_optimizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    offline, _ = make_optimizer(RMConfig(data="d", model="m", out="o"), model, total=10)
    _, online = online_optimizer(GRPOConfig(prompts="p", out="o", reward=["python:f.py:g"]), model, None)
    for optimizer in (offline, online):
        assert optimizer.defaults[CPU_CHOICE] is True


@pytest.mark.parametrize("kind", ["foreach", "fused"])
def test_implementations_agree_to_float_noise(kind: str) -> None:
    """Ten steps of each CPU implementation end within 1e-6 of the for-loop's weights."""
    def run(**flag: bool) -> list[torch.Tensor]:
        params = _params()
        optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1, **flag)
        for step in range(10):
            for i, p in enumerate(params):
                p.grad = torch.full_like(p, 0.1 * (step - i))
            optimizer.step()
        return [p.detach() for p in params]

    for a, b in zip(run(foreach=False), run(**{kind: True})):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert adamw([{"params": _params()}], lr=1e-3).defaults[CPU_CHOICE] is True
