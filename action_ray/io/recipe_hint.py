"""The recipe hint: one small file at a collection's root naming the dataset recipe to ingest it with.

``action-ray synth`` writes it, ``action-ray ingest`` reads it, so phantoms in the ACDC or LiTS
layout get their own recipe (classes, normalisation, seeded 70/10/20 split) rather than the real
dataset's. The file name is the whole contract between the two, so it is defined here, below
both of them, and neither imports the other.
"""

from __future__ import annotations

RECIPE_HINT_FILE = "action-ray-recipe.txt"


def recipe_hint_bytes(recipe: str) -> bytes:
    """The hint file's content for ``recipe``: its name and a newline."""
    return (recipe + "\n").encode()


def read_recipe_hint(fs, root: str) -> str | None:
    """The recipe named at ``root`` on an fsspec filesystem, or None when there is no (or an empty) hint."""
    try:
        text = fs.cat_file(f"{root.rstrip('/')}/{RECIPE_HINT_FILE}").decode().strip()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    return text or None
