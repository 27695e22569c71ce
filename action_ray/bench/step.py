"""Training-step time of every stage next to the floor: a bare UNet forward/backward + SGD step.

``action-ray bench step [--preset cpu|paper] [--size 64] [--batch 4] [--steps N] [--device cpu|cuda]``

Each stage step (P1, P2, FT, supervised, Mean Teacher) runs on synthetic slices with the
shipped config (``cpu-demo`` for ``--preset cpu``, ``acdc-2d`` for ``paper``), and so does a
plain student UNet step on the same number of images (the floor: forward, CE loss, backward,
SGD). The table shows the median of ``--steps`` timed steps after ``--warmup`` untimed ones and
the ratio to the floor (stage and floor steps alternate, so load changes hit both); on CUDA every timing is bracketed by ``torch.cuda.synchronize`` and the
peak allocated memory of each row is reported.

Batch sizes: P1/P2 take ``--batch`` slices (first half labelled, §7); FT and Mean Teacher take
``--batch`` labelled + ``--batch`` unlabelled slices; supervised takes ``--batch`` labelled. The
published implementation's times on an H200 (paper preset, 256², 6 / 4+4 slices) are printed
next to the CUDA numbers: P2 0.062 s, FT 0.44 s.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

#: published step times on an H200 (paper preset, 256x256; P2 6 slices, FT 4 + 4 slices)
PUBLISHED_H200_S = {"p2": 0.062, "ft": 0.44}
PRESET_CONFIGS = {"cpu": "cpu-demo", "paper": "acdc-2d"}
NUM_CLASSES = 4
#: table row -> (method, stage)
ROWS = {"p1": ("action", "p1"), "p2": ("action", "p2"), "ft": ("action", "ft"),
        "supervised": ("supervised", "ft"), "mean_teacher": ("mean_teacher", "ft")}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESET_CONFIGS), default="cpu", help="model/heads preset")
    parser.add_argument("--size", type=int, default=64, help="square slice side (multiple of 16)")
    parser.add_argument("--batch", type=int, default=4, help="slices per stream (see module docs)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--stages", default="p1,p2,ft,supervised,mean_teacher",
                        help="comma-separated rows to run")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last model and inputs")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network forwards")


def _synthetic(n: int, size: int, device):
    import torch

    g = torch.Generator().manual_seed(n * 1000 + size)
    images = torch.rand(n, 1, size, size, generator=g)
    labels = (images[:, 0] * NUM_CLASSES).long().clamp(max=NUM_CLASSES - 1)
    return images.to(device), labels.to(device)


def _time_pair(
    stage: Callable[[], object], floor: Callable[[], object], steps: int, warmup: int, cuda: bool
) -> tuple[float, float, float]:
    """(median s per stage step, median s per floor step, peak MiB of the stage or nan).

    The two are timed alternately, step by step, so that a change of machine load while the
    benchmark runs moves both and the ratio stays meaningful.
    """
    import torch

    for _ in range(warmup):
        stage()
        floor()
    if cuda:
        torch.cuda.synchronize()
    stage_times, floor_times, peak = [], [], 0.0
    for _ in range(steps):
        for fn, times in ((stage, stage_times), (floor, floor_times)):
            if cuda:
                torch.cuda.synchronize()
                if fn is stage:
                    torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
                if fn is stage:
                    peak = max(peak, torch.cuda.max_memory_allocated() / 2**20)
            times.append(time.perf_counter() - start)
    return statistics.median(stage_times), statistics.median(floor_times), peak if cuda else float("nan")


def _config(args: argparse.Namespace, method: str):
    from action_ray.config import load_config

    return load_config(PRESET_CONFIGS[args.preset], [
        f"method={method}", "train.num_workers=1", f"data.slice_size={args.size}",
        f"train.amp={str(args.amp).lower()}", f"train.channels_last={str(args.channels_last).lower()}",
        f"train.compile={str(args.compile).lower()}", f"train.use_gpu={str(args.device == 'cuda').lower()}",
        # the published 64/32 local windows on 256² slices, scaled to the bench size (36 windows)
        f"model.cut_size={args.size // 4}", f"model.cut_stride={args.size // 8}",
        *(f"schedule.{s}.iterations=1000000" for s in ("p1", "p2", "ft")),
    ])


def _floor_step(args: argparse.Namespace, n: int, device) -> Callable[[], object]:
    """A plain supervised UNet step (forward, CE, backward, SGD) on ``n`` slices."""
    import torch
    import torch.nn.functional as F

    from action_ray.train.state import build_model

    config = _config(args, "supervised")
    torch.manual_seed(0)
    unet = build_model(config, NUM_CLASSES).student.to(device)
    if args.channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(unet.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    images, labels = _synthetic(n, args.size, device)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    use_amp = args.amp and args.device == "cuda"

    def step():
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = F.cross_entropy(unet(images).logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _stage_step(args: argparse.Namespace, row: str, device) -> tuple[Callable[[], object], int]:
    """(one step of ``row`` on a fixed synthetic batch, number of images it processes)."""
    import torch

    from action_ray.train.state import build_state
    from action_ray.train.steps import bind_step

    method, stage = ROWS[row]
    config = _config(args, method)
    state = build_state(config, NUM_CLASSES, device, stage)
    b = args.batch
    if stage in ("p1", "p2"):
        images, labels = _synthetic(b, args.size, device)
        labelled = torch.arange(b, device=device) < max(1, b // 2)
        batch, n = {"image": images, "label": labels, "labelled": labelled}, b
    else:
        images, labels = _synthetic(2 * b, args.size, device)
        batch = {"image_l": images[:b], "label_l": labels[:b], "image_u": images[b:]}
        n = b if method == "supervised" else 2 * b
    fn = bind_step(config, stage)
    return (lambda: fn(state, batch)), n


def run(args: argparse.Namespace) -> int:
    import torch

    from action_ray.errors import ActionRayError

    if args.device == "cuda" and not torch.cuda.is_available():
        raise ActionRayError("--device cuda: no CUDA device is visible to torch")
    if args.size % 16 or args.batch < 2:
        raise ActionRayError(f"--size must be a multiple of 16 and --batch >= 2 (got {args.size}, {args.batch})")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    rows = [r.strip() for r in args.stages.split(",") if r.strip()]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        raise ActionRayError(f"--stages: unknown {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    print(f"bench step: preset={args.preset} size={args.size} batch={args.batch} device={args.device} "
          f"threads={torch.get_num_threads()} amp={args.amp} channels_last={args.channels_last} "
          f"compile={args.compile} steps={args.steps} (median) warmup={args.warmup}")
    results = []
    for row in rows:
        step, n = _stage_step(args, row, device)
        seconds, floor, peak = _time_pair(step, _floor_step(args, n, device), args.steps, args.warmup, cuda)
        results.append((row, n, seconds, floor, peak))
    header = f"{'stage':<13} {'images':>6} {'step ms':>9} {'floor ms':>9} {'ratio':>6} {'peak MiB':>9}"
    if cuda and args.preset == "paper":
        header += f" {'published H200 ms':>18}"
    print(header)
    for row, n, seconds, floor, peak in results:
        line = (f"{row:<13} {n:>6} {seconds * 1e3:>9.1f} {floor * 1e3:>9.1f} "
                f"{seconds / floor:>6.2f} {peak:>9.0f}")
        if cuda and args.preset == "paper":
            published = PUBLISHED_H200_S.get(row)
            line += f" {published * 1e3 if published else float('nan'):>18.0f}"
        print(line)
    print("floor = bare student UNet forward + CE + backward + SGD on the same number of images")
    return 0
