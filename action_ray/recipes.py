"""Dataset recipes: what a collection *is* (classes, modality, layout, splits, normalisation).

A recipe is a small YAML file kept next to the dataset's README in ``datasets/<name>/recipe.yaml``
and shipped with the package as ``action_ray/recipes/<name>.yaml``, so ``--recipe acdc`` works
from an installed wheel. Ingest uses the classes, modality, layout and split file; training uses
the intensity normalisation, computed from the per-case statistics the store records
(``p0_5``/``p99_5``/``mean``/``std``) so a single slice can be normalised without reading its
whole volume.

The ``normalisation`` block is :class:`action_ray.io.normalise.NormalisationSpec` in its own
vocabulary (``{method: percentile}``, ``{method: window, window: [low, high]}``, ``zscore``,
``minmax``, ``none``); recipes in the older spelling (``percentile_minmax``, ``low``/``high``)
still load.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Literal, Mapping, Sequence

import yaml
from pydantic import (
    BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, ValidationError, field_validator, model_validator,
)

from action_ray.errors import ConfigError
from action_ray.io.normalise import METHODS, NormalisationSpec
from action_ray.store.schema import MAX_CLASS_INDEX, SPLITS

#: Layout -> recipe used when ``action-ray ingest`` gets no ``--recipe``.
DEFAULT_RECIPE_FOR_LAYOUT = {"acdc": "acdc", "lits": "lits", "msd": "msd"}
SPLIT_FILE_SUFFIX = "-split.yaml"


def _normalisation(value: object) -> NormalisationSpec:
    """The recipe's ``normalisation`` block as the spec the data path applies; ``method`` is required."""
    if isinstance(value, NormalisationSpec):
        return value
    if not isinstance(value, Mapping) or value.get("method") is None:
        raise ValueError(f"needs a method, one of {', '.join(METHODS)} (e.g. {{method: percentile}})")
    try:
        return NormalisationSpec.from_dict(value)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


#: A recipe's normalisation: read through the one parser, written back in today's vocabulary.
RecipeNormalisation = Annotated[NormalisationSpec, PlainValidator(_normalisation),
                                PlainSerializer(NormalisationSpec.to_dict)]


class SplitRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rule: Literal["file", "seed"]
    file: str | None = Field(None, description="rule 'file': YAML {train: [patient ids], val: [...], test: [...]}")
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    source: str | None = Field(None, description="where the split comes from, for the record")

    @model_validator(mode="after")
    def _file_given(self) -> "SplitRule":
        if self.rule == "file" and not self.file:
            raise ValueError("rule 'file' needs 'file: <name>-split.yaml'")
        return self


class Recipe(BaseModel):
    """A validated dataset recipe; ``path`` is where it was loaded from (for split files)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    title: str
    modality: str
    layout: Literal["acdc", "lits", "msd", "folder"]
    classes: dict[int, str]
    normalisation: RecipeNormalisation
    split: SplitRule
    chunking: Literal["slice", "patch"] = "slice"
    path: Path | None = Field(None, exclude=True)

    @field_validator("classes")
    @classmethod
    def _background_first(cls, classes: dict[int, str]) -> dict[int, str]:
        if 0 not in classes:
            raise ValueError("classes must include 0 (background)")
        if any(not 0 <= k <= MAX_CLASS_INDEX for k in classes):
            raise ValueError(f"class indices must be in 0..{MAX_CLASS_INDEX} (labels are stored as uint8, "
                             "and 255 marks a row without a label in the training stream)")
        return dict(sorted(classes.items()))

    def split_assignment(self) -> dict[str, str] | None:
        """Patient id -> split from the recipe's split file, or None for the seed rule."""
        if self.split.rule != "file":
            return None
        return load_split_file(self._sibling(self.split.file))

    def _sibling(self, name: str) -> Path:
        base = self.path.parent if self.path is not None else _package_dir()
        return base / name


def _package_dir() -> Path:
    return Path(str(resources.files("action_ray") / "recipes"))


def list_recipes() -> list[str]:
    """Names of the recipes shipped with the package."""
    return sorted(p.stem for p in _package_dir().glob("*.yaml") if not p.name.endswith(SPLIT_FILE_SUFFIX))


def _read_yaml(path: Path) -> object:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Load a recipe by shipped name (``acdc``) or by path (``datasets/acdc/recipe.yaml``)."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        path = candidate
    elif str(name_or_path) in list_recipes():
        path = _package_dir() / f"{name_or_path}.yaml"
    else:
        path = candidate / "recipe.yaml"  # a datasets/<name>/ folder
    if not path.is_file():
        raise ConfigError(f"recipe {str(name_or_path)!r} not found: use one of {', '.join(list_recipes())} "
                          "or a path to a recipe.yaml")
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a YAML mapping")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: {problems}") from None
    recipe.path = path
    return recipe


def load_split_file(path: str | Path) -> dict[str, str]:
    """Read ``{train: [ids], val: [...], test: [...]}`` into patient id -> split."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"split file {path} not found")
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a split file maps train/val/test to lists of patient ids")
    return invert_split_file(data, str(path))


def invert_split_file(mapping: Mapping[str, Sequence[str]], source: str) -> dict[str, str]:
    """``{"train": [ids], ...}`` -> ``{id: "train"}``, rejecting unknown splits and duplicates."""
    assignment: dict[str, str] = {}
    for split, ids in mapping.items():
        if split not in SPLITS:
            raise ConfigError(f"{source}: unknown split {split!r}; use {', '.join(SPLITS)}")
        for pid in ids or []:
            pid = str(pid)
            if pid in assignment and assignment[pid] != split:
                raise ConfigError(f"{source}: patient {pid!r} is in both {assignment[pid]!r} and {split!r}")
            assignment[pid] = split
    return assignment
