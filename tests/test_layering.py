"""The package's layering holds: import-linter checks the contracts in pyproject.toml.

Every import counts, those inside functions too, so a lazy import cannot hide an upward
dependency or a cycle. The contracts say what the layers are and why.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    lint = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    result = subprocess.run([lint, "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout
    assert result.stdout.count("KEPT") == 3


#: The verbs import the packages they drive inside ``run`` on purpose, so that ``action-ray
#: --help`` starts without torch, Ray or the data stack (cli.py and commands/__init__.py say so).
LAZY_BY_DESIGN = ("action_ray/cli.py", "action_ray/commands/", "action_ray/bench/")


def _function_level_imports(path: Path):
    """(line number, module) of every ``from action_ray... import`` inside a function of ``path``."""
    import ast

    tree = ast.parse(path.read_text())
    for function in ast.walk(tree):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("action_ray"):
                    yield node.lineno, node.module


def test_imports_inside_functions_are_lazy_on_purpose_and_say_why():
    """An internal import inside a function hides a dependency from the reader; outside the
    verbs it is allowed only with a ``# lazy: <reason>`` comment on its line."""
    unexplained = []
    for path in sorted((ROOT / "action_ray").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith(LAZY_BY_DESIGN):
            continue
        lines = path.read_text().splitlines()
        for lineno, module in _function_level_imports(path):
            if "# lazy" not in lines[lineno - 1]:
                unexplained.append(f"{relative}:{lineno} imports {module} inside a function")
    assert not unexplained, "\n".join(unexplained)


def test_the_command_line_parser_loads_neither_torch_nor_ray():
    """What the verbs' lazy imports buy: ``action-ray --help`` stays quick."""
    code = ("import sys, action_ray.cli as cli; cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'ray', 'nibabel', 'scipy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
