"""Dataset recipes: shipped copies match datasets/, they validate, splits and normalisation behave."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from action_ray.errors import ConfigError
from action_ray.io.normalise import NormalisationSpec, normalise_array
from action_ray.recipes import list_recipes, load_recipe

REPO = Path(__file__).resolve().parents[1]
DATASETS = ["acdc", "lits", "msd", "phantom-cardiac", "phantom-liver"]


def test_every_dataset_folder_has_readme_and_recipe_identical_to_the_packaged_copy():
    assert list_recipes() == sorted(DATASETS)
    for name in DATASETS:
        folder = REPO / "datasets" / name
        readme = (folder / "README.md").read_text()
        assert "Licence" in readme or "licence" in readme, name
        assert (folder / "recipe.yaml").read_text() == (REPO / "action_ray/recipes" / f"{name}.yaml").read_text()
        assert load_recipe(name).name == name and load_recipe(str(folder)).name == name
    assert (REPO / "datasets/acdc/acdc-split.yaml").read_text() == (REPO / "action_ray/recipes/acdc-split.yaml").read_text()


def test_acdc_split_file_is_70_10_20_of_training_patients_stratified_by_group():
    splits = load_recipe("acdc").split_assignment()
    training = {f"patient{i:03d}": splits[f"patient{i:03d}"] for i in range(1, 101)}
    assert [list(training.values()).count(s) for s in ("train", "val", "test")] == [70, 10, 20]
    for block in range(5):  # each pathology group of 20 is cut 14/2/4
        group = [training[f"patient{block * 20 + i:03d}"] for i in range(1, 21)]
        assert [group.count(s) for s in ("train", "val", "test")] == [14, 2, 4]
    assert all(splits[f"patient{i:03d}"] == "test" for i in range(101, 151))
    import runpy

    generated = runpy.run_path(str(REPO / "datasets/acdc/make_split.py"))["make_split"]()
    assert {pid: s for s, ids in generated.items() for pid in ids} == splits  # file == its generator


def test_seed_rule_recipes_have_no_split_file():
    assert load_recipe("lits").split_assignment() is None
    assert load_recipe("phantom-cardiac").split.fractions == (0.7, 0.1, 0.2)


def test_normalisation_methods():
    stats = {"p0_5": 10.0, "p99_5": 110.0, "mean": 50.0, "std": 25.0}
    image = np.array([0.0, 10.0, 60.0, 200.0], np.float32)
    np.testing.assert_allclose(normalise_array(image, load_recipe("acdc").normalisation, stats), [0, 0, 0.5, 1])
    np.testing.assert_allclose(normalise_array(image, load_recipe("msd").normalisation, stats), [-2, -1.6, 0.4, 6])
    hu = np.array([-1000.0, -125.0, 75.0, 275.0, 1000.0], np.float32)
    np.testing.assert_allclose(normalise_array(hu, load_recipe("lits").normalisation, stats), [0, 0, 0.5, 1, 1])


RECIPE_HEAD = "name: x\ntitle: x\nmodality: CT\nlayout: lits\nclasses: {0: bg, 1: liver}\nsplit: {rule: seed}\n"


def test_a_user_recipe_in_the_old_spelling_loads_and_is_written_in_todays(tmp_path):
    path = tmp_path / "r.yaml"
    for old, spec in (("{method: window, low: -100, high: 200}", NormalisationSpec("window", window=(-100.0, 200.0))),
                      ("{method: percentile_minmax, lower: 0.5, upper: 99.5}", NormalisationSpec("percentile"))):
        path.write_text(RECIPE_HEAD + f"normalisation: {old}\n")
        recipe = load_recipe(str(path))
        assert recipe.normalisation == spec
        assert recipe.model_dump()["normalisation"] == spec.to_dict()


def test_shipped_recipes_use_todays_vocabulary_only():
    for name in DATASETS:
        text = (REPO / "action_ray/recipes" / f"{name}.yaml").read_text()
        assert not any(old in text for old in ("percentile_minmax", "low:", "high:", "lower:", "upper:")), name


def test_bad_recipes_name_the_key(tmp_path):
    path = tmp_path / "r.yaml"
    for block, reason in (("{window: [0, 1]}", "needs a method"), ("{method: histogram}", "not one of"),
                          ("{method: percentile, lower: 1, upper: 99}", "percentiles")):
        path.write_text(RECIPE_HEAD + f"normalisation: {block}\n")
        with pytest.raises(ConfigError, match=f"normalisation.*{reason}"):
            load_recipe(str(path))

    path = tmp_path / "r.yaml"
    path.write_text("name: x\ntitle: x\nmodality: CT\nlayout: lits\nclasses: {1: liver}\n"
                    "normalisation: {method: window, low: 5, high: 1}\nsplit: {rule: file}\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(str(path))
    message = str(err.value)
    assert "classes" in message and "normalisation" in message and "split" in message
    with pytest.raises(ConfigError, match="not found"):
        load_recipe("no-such-dataset")


def test_class_255_is_refused_because_the_stream_uses_it_for_no_label(tmp_path):
    """A stored class 255 would be read back by the training stream as "no label here" and
    ignored by the losses, silently; the recipe must refuse it and say why."""
    path = tmp_path / "r.yaml"
    path.write_text("name: x\ntitle: x\nmodality: CT\nlayout: lits\nclasses: {0: background, 255: rim}\n"
                    "normalisation: {method: window, low: 0, high: 1}\nsplit: {rule: seed}\n")
    with pytest.raises(ConfigError, match=r"classes.*0\.\.254.*255 marks a row without a label"):
        load_recipe(str(path))
    path.write_text(path.read_text().replace("255: rim", "254: rim"))
    assert load_recipe(str(path)).classes == {0: "background", 254: "rim"}
