"""Preference losses on per-pair tensors, with the maths they implement.

Notation: r_c, r_r are reward-model scores of the chosen and rejected responses; for DPO,
pi_c = log pi_theta(y_c|x), ref_c = log pi_ref(y_c|x) (summed over response tokens), and the
implicit-reward difference is  h = (pi_c - ref_c) - (pi_r - ref_r).
Every function returns the per-pair loss, shape (B,); callers take the mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlaif.train.config import DPOLossType


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | None = None,
                       center_coef: float = 0.0) -> torch.Tensor:
    """Reward-model loss  -log sigmoid(r_c - r_r - m)  +  c * (r_c + r_r)^2.

    Bradley & Terry (1952); the margin m (the judge's score gap, Llama 2, Touvron et al. 2023)
    asks for a larger gap on clearer pairs; the centering term (Eisenstein et al. 2023, "Helping or
    herding?") keeps rewards near zero mean, since the loss only sees differences.
    """
    diff = r_chosen - r_rejected
    if margin is not None:
        diff = diff - margin
    loss = -F.logsigmoid(diff)
    if center_coef:
        loss = loss + center_coef * (r_chosen + r_rejected) ** 2
    return loss


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1, loss_type: DPOLossType = "sigmoid",
             label_smoothing: float = 0.0, chosen_tokens: torch.Tensor | None = None,
             rejected_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Direct preference optimisation losses on sequence log-probabilities.

    - sigmoid (Rafailov et al. 2023):  -log sigmoid(beta h);  with label smoothing eps it is the
      conservative cDPO loss  -(1-eps) log sigmoid(beta h) - eps log sigmoid(-beta h).
    - robust (Chowdhury et al. 2024, provably robust DPO), unbiased under label-flip rate eps:
      [-(1-eps) log sigmoid(beta h) + eps log sigmoid(-beta h)] / (1 - 2 eps).
    - hinge (SLiC, Zhao et al. 2023):  max(0, 1 - beta h).
    - ipo (Azar et al. 2023, eq. 17):  (h - 1/(2 beta))^2, with the log-probs averaged over response
      tokens (pass chosen_tokens / rejected_tokens) as the IPO authors did, so beta does not
      depend on response length.
    """
    if loss_type == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("ipo needs the response token counts")
        h = ((policy_chosen - ref_chosen) / chosen_tokens.clamp(min=1)
             - (policy_rejected - ref_rejected) / rejected_tokens.clamp(min=1))
        return (h - 1 / (2 * beta)) ** 2
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    if loss_type == "sigmoid":
        return -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    if loss_type == "robust":
        if not 0 <= label_smoothing < 0.5:
            raise ValueError("robust DPO needs 0 <= label_smoothing < 0.5")
        return (-(1 - label_smoothing) * F.logsigmoid(beta * h)
                + label_smoothing * F.logsigmoid(-beta * h)) / (1 - 2 * label_smoothing)
    if loss_type == "hinge":
        return torch.relu(1 - beta * h)
    raise ValueError(f"unknown DPO loss type {loss_type!r}")

