"""Correctness of the pure-torch method on CUDA against the CPU, in one process on the device.

Run by ``scripts/gpu_check.sh`` on a lent GPU machine (no package registries there: the image's
own PyTorch is used and action-ray is imported from the working tree). Every check computes the
same thing from the same inputs on both devices (TF32 off) and prints the largest relative
difference; the script exits 1 if any exceeds its tolerance.
"""

from __future__ import annotations

import os
import sys

import torch

from action_ray import losses
from action_ray.losses.anatomical_contrast import (
    _anatomical_contrast_from_samples, _key_table, _prototypes, class_masks,
    sample_contrast,
)
from action_ray.model import build_unet

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
#: GPU_CHECK_DEVICE=cpu dry-runs the script where there is no GPU (every diff is then 0)
CUDA = torch.device(os.environ.get("GPU_CHECK_DEVICE", "cuda"))
failures: list[str] = []


def compare(name: str, cpu: torch.Tensor, gpu: torch.Tensor, tol: float = 1e-4) -> None:
    cpu, gpu = cpu.detach().double(), gpu.detach().double().cpu()
    rel = ((cpu - gpu).abs().max() / cpu.abs().max().clamp(min=1e-12)).item()
    ok = torch.isfinite(gpu).all().item() and rel <= tol
    print(f"{'ok  ' if ok else 'FAIL'} {name:<44} max rel diff {rel:.2e} (tol {tol:.0e})")
    if not ok:
        failures.append(name)


def both(fn, *tensors, **kwargs):
    """fn on CPU tensors and on their CUDA copies (grad-enabled leaves), with input grads."""
    outs = []
    for device in ("cpu", CUDA):
        leaves = [t.detach().to(device).requires_grad_(t.is_floating_point()) for t in tensors]
        value = fn(*leaves, **kwargs)
        grads = torch.autograd.grad(value, [t for t in leaves if t.requires_grad], allow_unused=True)
        outs.append((value, grads))
    return outs


def main() -> int:
    gen = torch.Generator().manual_seed(0)
    name = torch.cuda.get_device_name() if CUDA.type == "cuda" else "cpu (dry run)"
    print(f"device: {name} torch {torch.__version__}")

    # 1. the paper UNet, eval mode, 4 x 256^2
    net = build_unet("paper", 4).eval()
    x = torch.rand(4, 1, 256, 256, generator=gen)
    with torch.no_grad():
        out_cpu = net(x)
        out_gpu = net.to(CUDA)(x.to(CUDA))
    compare("UNet logits (paper, eval)", out_cpu.logits, out_gpu.logits, 1e-3)
    compare("UNet bottleneck", out_cpu.bottleneck, out_gpu.bottleneck, 1e-3)

    # 2. losses on identical inputs, values and input gradients
    logits = torch.randn(4, 4, 64, 64, generator=gen)
    target = torch.randint(0, 4, (4, 64, 64), generator=gen)
    (v0, g0), (v1, g1) = both(lambda l, t: losses.supervised_loss(l, t), logits, target)
    compare("supervised_loss", v0, v1); compare("supervised_loss grad", g0[0], g1[0])

    student, teacher, bank = (torch.randn(6, 512, generator=gen) for _ in range(3))
    bank = torch.randn(36, 512, generator=gen)
    (v0, g0), (v1, g1) = both(lambda s, t, b: losses.global_distillation_loss(s, t, b, 0.1, 0.01),
                              student, teacher, bank)
    compare("global_distillation_loss (T_t 0.01)", v0, v1); compare("global grad", g0[0], g1[0])

    for layout in ("per_position", "faithful"):
        us, ut = torch.randn(36, 6, 256, generator=gen), torch.randn(36, 6, 256, generator=gen)
        lbank = torch.randn(36, 36, 256, generator=gen)
        (v0, g0), (v1, g1) = both(lambda s, t, b: losses.local_distillation_loss(
            s, t, b, 0.1, 0.01, layout=layout), us, ut, lbank)
        compare(f"local_distillation_loss ({layout})", v0, v1); compare(f"local grad ({layout})", g0[0], g1[0])

    pseudo = torch.randint(-1, 4, (4, 64, 64), generator=gen)
    conf = torch.rand(4, 64, 64, generator=gen)
    (v0, g0), (v1, g1) = both(lambda l, p, c: losses.pseudo_label_loss(l, p, c, 0.97), logits, pseudo, conf)
    compare("pseudo_label_loss", v0, v1); compare("pseudo_label_loss grad", g0[0], g1[0])

    # anatomical contrast: draw the samples once on the CPU, evaluate on both devices
    rep = torch.randn(8, 64, 64, 64, generator=gen)
    labels = torch.randint(0, 4, (8, 64, 64), generator=gen)
    onehot = torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    valid = torch.rand(8, 64, 64, generator=gen) > 0.2
    probs = torch.softmax(torch.randn(8, 4, 64, 64, generator=gen), dim=1)
    anchors, hard = class_masks(onehot, valid, probs, 0.97)
    table = _key_table(rep, None)
    protos = _prototypes(anchors, table, torch.float32)
    samples = sample_contrast(anchors, hard, protos, 0.5, 256, 512, gen)
    results = []
    for device in ("cpu", CUDA):
        r = rep.to(device).requires_grad_(True)
        moved = type(samples)(*(t.to(device) for t in samples.__dict__.values()))
        value = _anatomical_contrast_from_samples(r, protos.to(device), moved, _key_table(r, None), 0.5)
        results.append((value, torch.autograd.grad(value, r)[0]))
    compare("anatomical_contrast (fixed samples)", results[0][0], results[1][0])
    compare("anatomical_contrast grad", results[0][1], results[1][1])

    # 3. the full loss on CUDA draws on the device and stays finite
    value = losses.anatomical_contrast_loss(rep.to(CUDA), onehot.to(CUDA), valid.to(CUDA), probs.to(CUDA))
    print(f"{'ok  ' if torch.isfinite(value).item() else 'FAIL'} anatomical_contrast_loss on CUDA finite")
    if not torch.isfinite(value).item():
        failures.append("anco finite")
    print("FAILED: " + ", ".join(failures) if failures else "all CUDA checks agree with the CPU")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
