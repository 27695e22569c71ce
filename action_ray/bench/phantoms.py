"""CPU-seconds per phantom volume and class statistics, each next to its target (docs/phantoms.md).

CPU time is ``time.process_time`` around each generator call (one cardiac case = two volumes,
ED and ES), so it is not inflated by other processes sharing the machine.
"""

from __future__ import annotations

import argparse

#: The calibration targets of docs/phantoms.md, shown next to the measurements.
CARDIAC_TARGETS = {
    "CPU-s / volume": "<= 1.0 (proto 0.52)",
    "slices / volume": "6-18 (proto mean 13.2)",
    "slice spacing mm": "5-10",
    "fraction bg": "~0.969",
    "fraction RV": "~0.01 (proto 0.0093)",
    "fraction MYO": "~0.01 (proto 0.0113)",
    "fraction LV": "~0.01 (proto 0.0100)",
}
LIVER_TARGETS = {
    "CPU-s / volume": "<= 1.0 (proto 0.57)",
    "slices / volume": "48",
    "slice spacing mm": "2.5-5",
    "fraction bg": "~0.935",
    "fraction liver": "~0.06 (proto 0.062)",
    "fraction tumour": "0.001-0.01 (proto 0.0029)",
    "tumour-free volumes": "~12-17 %",
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", type=int, default=10, help="cases per generator (default 10)")
    parser.add_argument("--size", type=int, default=128, help="in-plane matrix (default 128)")
    parser.add_argument("--kind", choices=("cardiac", "liver", "both"), default="both")
    parser.add_argument("--seed", type=int, default=0, help="collection seed (default 0)")


def measure_cardiac(cases: int, size: int, seed: int) -> dict[str, str]:
    """Run the cardiac generator ``cases`` times; return formatted measurements by row name."""
    import time

    import numpy as np

    from action_ray.synth.cardiac import cardiac_case
    from action_ray.synth.collection import case_seed

    cpu, fractions, slices, spacings = [], [], [], []
    for i in range(cases):
        start = time.process_time()
        case = cardiac_case(case_seed(seed, i), size)
        cpu.append((time.process_time() - start) / 2)  # two volumes per case
        for label in (case.ed_label, case.es_label):
            fractions.append(np.bincount(label.ravel(), minlength=4)[:4] / label.size)
            slices.append(label.shape[0])
        spacings.append(case.spacing[0])
    mean = np.mean(fractions, axis=0)
    return {
        "CPU-s / volume": _spread(cpu, "{:.2f}"),
        "slices / volume": _spread(slices, "{:.1f}"),
        "slice spacing mm": _spread(spacings, "{:.1f}"),
        **{f"fraction {name}": f"{mean[k]:.4f}" for k, name in enumerate(("bg", "RV", "MYO", "LV"))},
    }


def measure_liver(cases: int, size: int, seed: int) -> dict[str, str]:
    """Run the liver generator ``cases`` times; return formatted measurements by row name."""
    import time

    import numpy as np

    from action_ray.synth.collection import case_seed
    from action_ray.synth.liver import liver_case

    cpu, fractions, slices, spacings = [], [], [], []
    for i in range(cases):
        start = time.process_time()
        case = liver_case(case_seed(seed, i), size)
        cpu.append(time.process_time() - start)
        fractions.append(np.bincount(case.label.ravel(), minlength=3)[:3] / case.label.size)
        slices.append(case.label.shape[0])
        spacings.append(case.spacing[0])
    fractions = np.array(fractions)
    mean = fractions.mean(axis=0)
    tumour_free = float(np.mean(fractions[:, 2] == 0)) * 100
    return {
        "CPU-s / volume": _spread(cpu, "{:.2f}"),
        "slices / volume": _spread(slices, "{:.1f}"),
        "slice spacing mm": _spread(spacings, "{:.1f}"),
        "fraction bg": f"{mean[0]:.4f}",
        "fraction liver": f"{mean[1]:.4f}",
        "fraction tumour": f"{mean[2]:.4f} (median {np.median(fractions[:, 2]):.4f})",
        "tumour-free volumes": f"{tumour_free:.0f} %",
    }


def _spread(values, fmt: str) -> str:
    """``mean (min-max)`` with one number format."""
    import numpy as np

    return f"{fmt.format(np.mean(values))} ({fmt.format(np.min(values))}-{fmt.format(np.max(values))})"


def format_table(title: str, measured: dict[str, str], targets: dict[str, str]) -> str:
    """A plain-text table: quantity | measured | target."""
    rows = [("quantity", "measured", "target")] + [(k, measured[k], targets[k]) for k in targets]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [title]
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from action_ray.errors import ActionRayError

    if args.cases < 1:
        raise ActionRayError(f"--cases must be >= 1, got {args.cases}")
    if args.size < 16 or args.size % 2:
        raise ActionRayError(f"--size must be an even number >= 16, got {args.size}")
    tables = []
    if args.kind in ("cardiac", "both"):
        measured = measure_cardiac(args.cases, args.size, args.seed)
        tables.append(format_table(f"cardiac phantoms: {args.cases} patients ({2 * args.cases} volumes), "
                                   f"{args.size}x{args.size}", measured, CARDIAC_TARGETS))
    if args.kind in ("liver", "both"):
        measured = measure_liver(args.cases, args.size, args.seed)
        tables.append(format_table(f"liver phantoms: {args.cases} volumes, {args.size}x{args.size}x48",
                                   measured, LIVER_TARGETS))
    print("\n\n".join(tables))
    return 0
