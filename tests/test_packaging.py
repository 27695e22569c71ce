"""The package as a user gets it: build the wheel, install it into a fresh virtual environment,
and run the CLI from there, away from the source tree (so a module or data file missing from
the wheel fails here, not on a user's machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 300) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_the_wheel_installs_and_runs_synth_ingest_info_outside_the_source_tree(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
         str(ROOT)], cwd=tmp_path)
    (wheel,) = wheels.glob("action_ray-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    # the dependencies come from this environment's site-packages (no network in CI); its .pth
    # files, among them the editable install of the source tree, are not read from there
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    cwd=tmp_path).strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --force-reinstall: the development environment's own (editable) action-ray metadata is on
    # that path too, and pip would otherwise take it for this very package, already installed
    run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--force-reinstall", str(wheel)],
        cwd=tmp_path, env=env)
    where = run([str(python), "-c", "import action_ray; print(action_ray.__file__)"], cwd=tmp_path, env=env)
    assert where.startswith(str(site)), where  # the installed copy, not the checkout
    cli = str(venv / "bin" / "action-ray")
    assert "ingest" in run([cli, "--help"], cwd=tmp_path, env=env)
    run([cli, "synth", "cardiac", "--out", "phantoms", "--cases", "2"], cwd=tmp_path, env=env)
    run([cli, "ingest", "phantoms", "store.zarr", "--layout", "acdc", "--no-progress"], cwd=tmp_path, env=env)
    info = json.loads(run([cli, "info", "store.zarr", "--json"], cwd=tmp_path, env=env))
    assert info["n_cases"] == 4 and info["n_labelled"] == 4  # 2 patients × ED/ES, both labelled
    assert info["dataset"]["name"] == "phantom-cardiac"  # the packaged recipe travelled in the wheel
