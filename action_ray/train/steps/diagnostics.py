"""Training diagnostics computed on report steps only: how the losses pull on the network.

Why: a distillation loss whose gradient is 30x the supervised one, or points against it, wipes
out what the few labels teach, and the loss values alone do not show it (issue: ACTION losing
to its baselines). On report steps the pre-training steps measure, per part of the student,
the gradient of each auxiliary loss against the supervised gradient (norm ratio and cosine),
and the FT step summarises its pseudo-labels. Everything is computed with extra autograd
passes over the graph the step already built (``retain_graph``), only every
``train.report_every`` steps, so ordinary steps cost nothing extra.

The numbers are stored in ``state.extras["diagnostics"]``; the training loop moves them into
that report's metrics (``metrics.jsonl``, ``curves.png``).
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch

DIAGNOSTICS_KEY = "diagnostics"


def is_report_step(step: int, report_every: int, iterations: int) -> bool:
    """True when the step about to complete (``step + 1``) is one the loop reports."""
    upcoming = step + 1
    return upcoming % report_every == 0 or upcoming >= iterations


def _flat_grad(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([
        (g if g is not None else torch.zeros_like(p)).reshape(-1).float() for g, p in zip(grads, params)
    ])


def gradient_alignment(
    losses: Mapping[str, torch.Tensor],
    reference: str,
    groups: Mapping[str, Iterable[torch.nn.Parameter]],
) -> dict[str, float]:
    """Norm ratio and cosine of each loss's gradient against ``losses[reference]``'s, per group.

    Keys ``grad_ratio/<group>/<loss>`` = |∇loss| / |∇reference| and ``grad_cos/<group>/<loss>``
    (0 when either gradient is zero). ``groups`` maps a name ("encoder", "decoder") to the
    parameters to measure on; only parameters that require grad count.
    """
    out: dict[str, float] = {}
    for group, parameters in groups.items():
        params = [p for p in parameters if p.requires_grad]
        if not params:
            continue
        ref = _flat_grad(losses[reference], params)
        ref_norm = ref.norm()
        for name, loss in losses.items():
            if name == reference or not loss.requires_grad:
                continue
            grad = _flat_grad(loss, params)
            norm = grad.norm()
            ratio = norm / ref_norm if ref_norm > 0 else torch.tensor(float("nan"))
            cosine = (grad @ ref) / (norm * ref_norm) if norm > 0 and ref_norm > 0 else torch.tensor(0.0)
            out[f"grad_ratio/{group}/{name}"] = float(ratio)
            out[f"grad_cos/{group}/{name}"] = float(cosine)
    return out


@torch.no_grad()
def pseudo_label_summary(
    labels: torch.Tensor, confidence: torch.Tensor, threshold: float, num_classes: int
) -> dict[str, float]:
    """What the teacher hands the student: per class, the share of unlabelled pixels it labels
    with that class (``pseudo_fraction/<c>``) and the share of those at or above the confidence
    threshold (``pseudo_confident/<c>``); ``pseudo_foreground`` is the foreground share."""
    out: dict[str, float] = {}
    confident = confidence >= threshold
    total = labels.numel()
    for c in range(num_classes):
        mask = labels == c
        count = mask.sum()
        out[f"pseudo_fraction/{c}"] = float(count) / total
        out[f"pseudo_confident/{c}"] = float((mask & confident).sum()) / float(count) if count > 0 else 0.0
    out["pseudo_foreground"] = float((labels > 0).sum()) / total
    return out


def record(extras: dict, values: Mapping[str, float]) -> None:
    """Add ``values`` to the diagnostics the loop will attach to the next report."""
    extras.setdefault(DIAGNOSTICS_KEY, {}).update(values)


def take(extras: dict) -> dict[str, float]:
    """The diagnostics recorded since the last report (and forget them)."""
    return dict(extras.pop(DIAGNOSTICS_KEY, {}) or {})
