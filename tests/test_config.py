"""The typed config: paper defaults, presets, overrides, error messages, round trips, hashing."""

from __future__ import annotations

import pytest
import yaml

from action_ray.runs.files import write_file
from action_ray.config import Config, all_keys, config_from_dict, load_config, preset_names
from action_ray.errors import ConfigError


def test_defaults_are_the_papers_section_9_values():
    cfg = Config()
    assert cfg.method == "action" and cfg.stages == ["p1", "p2", "ft"]
    assert cfg.data.slice_size == 256 and cfg.data.dims == 2
    assert (cfg.data.pretrain_labelled_batch, cfg.data.pretrain_unlabelled_batch) == (3, 3)
    assert (cfg.data.ft_labelled_batch, cfg.data.ft_unlabelled_batch) == (4, 4)
    assert cfg.data.labelled_patients == 1 and cfg.data.label_ratio is None
    assert cfg.model.preset_or_widths == "paper" and cfg.model.dims == 2
    assert (cfg.model.global_hidden, cfg.model.global_dim, cfg.model.representation_dim) == (256, 512, 512)
    assert (cfg.model.latent_pooling, cfg.model.local_pooling) == (1, 8)
    assert (cfg.model.cut_size, cfg.model.cut_stride) == (64, 32)
    for name in ("p1", "p2", "ft"):
        stage = cfg.stage(name)
        assert (stage.iterations, stage.lr, stage.momentum) == (30000, 0.01, 0.9)
        assert (stage.weight_decay, stage.poly_power) == (1e-4, 0.9)
        assert stage.nesterov is (name == "ft")  # Nesterov only in FT (§7)
    assert cfg.ema_momentum == 0.99
    d = cfg.distill
    assert (d.student_temperature, d.teacher_temperature) == (0.1, 0.01)
    assert (d.global_weight, d.local_weight) == (1.0, 1.0)
    assert d.bank_batches == 6 and d.bank_size is None
    assert d.resolved_bank_size(cfg.data.pretrain_batch) == 36  # K = 36 on one worker
    assert d.jitter_range == (0.8, 1.2) and d.blur_sigma == (0.15, 1.15)
    f = cfg.ft
    assert (f.strong_threshold, f.weak_threshold, f.anco_temperature) == (0.97, 0.7, 0.5)
    assert (f.num_queries, f.num_negatives, f.anco_weight, f.unsup_weight) == (256, 512, 0.01, 1.0)
    assert f.mix == "cutmix" and f.warp_p == 0.5 and f.warp_epsilon == 1.5
    assert cfg.train.seed == 1337 and cfg.train.checkpoint_every == 1000
    assert (cfg.mean_teacher.consistency, cfg.mean_teacher.rampup_fraction) == (0.1, 1.0)
    # the departures of method.md §8.1 are the defaults, each a named option.
    assert (d.teacher_head, d.local_layout, d.shuffle_bn) == ("grad", "per_position", False)
    assert (f.warp_labels, f.geo_aug, f.ema_steps_per_iter) == (True, True, 1)
    assert (f.anco_negatives, f.teacher_eval) == ("batch", False)


def test_overrides_parse_yaml_scalars_and_lists():
    cfg = load_config(
        None,
        ["ft.num_queries=64", "distill.teacher_temperature=0.6", "train.use_gpu=true",
         "method=supervised", "data.intensity_window=[-125, 275]", "schedule.ft.weight_decay=1e-3",
         "data.storage_options.endpoint_url=http://127.0.0.1:9000", "train.run_name=abc"],
    )
    assert cfg.ft.num_queries == 64 and cfg.distill.teacher_temperature == 0.6
    assert cfg.train.use_gpu is True and cfg.train.resolved_backend == "nccl"
    assert cfg.method == "supervised" and cfg.stages == ["ft"]  # stages follow the method
    assert cfg.data.intensity_window == (-125.0, 275.0)
    assert cfg.stage("ft").weight_decay == pytest.approx(1e-3)
    assert cfg.data.storage_options == {"endpoint_url": "http://127.0.0.1:9000"}


def test_override_of_one_key_of_a_pair_clears_the_other():
    cfg = load_config("acdc-2d", ["data.label_ratio=0.1", "distill.bank_size=100", "model.widths=[4,8,16,32,64]"])
    assert cfg.data.label_ratio == 0.1 and cfg.data.labelled_patients is None
    assert cfg.distill.resolved_bank_size(cfg.data.pretrain_batch) == 100 and cfg.distill.bank_batches is None
    assert cfg.model.preset_or_widths == (4, 8, 16, 32, 64)
    with pytest.raises(ConfigError, match="conflict"):
        load_config(None, ["data.label_ratio=0.1", "data.labelled_patients=3"])


def test_both_keys_of_a_pair_in_a_file_is_an_error(tmp_path):
    path = tmp_path / "both.yaml"
    path.write_text("data: {label_ratio: 0.1, labelled_patients: 3}\n")
    with pytest.raises(ConfigError, match=r"data\.labelled_patients or data\.label_ratio, not both"):
        load_config(str(path), [])


@pytest.mark.parametrize(
    "override, expected",
    [
        ("data.slize_size=64", r"unknown config key 'data\.slize_size'.*did you mean 'data\.slice_size'"),
        ("distill.teacher_temp=0.5", r"'distill\.teacher_temp'.*'distill\.teacher_temperature'"),
        ("schedule.p1.lrr=0.1", r"did you mean 'schedule\.p1\.lr'"),
        ("data.lr=0.1", r"unknown config key 'data\.lr'.*lives at 'schedule\.p1\.lr'"),
        ("trian.seed=1", r"unknown config key 'trian'.*did you mean 'train'"),
    ],
)
def test_unknown_key_names_it_and_suggests_the_closest(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, [override])


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["data.label_ratio=1.5"], r"'data\.label_ratio'.*1\.5.*less than or equal to 1"),
        (["data.label_ratio=0"], r"'data\.label_ratio'.*greater than 0"),
        (["ft.mix=mixup"], r"'ft\.mix'.*'mixup'.*'cutmix', 'classmix' or 'cutout'"),
        (["data.ft_unlabelled_batch=0"], r"'data\.ft_unlabelled_batch'.*greater than or equal to 1"),
        (["data.slice_size=100"], r"data\.slice_size=100 must be divisible by 16"),
        (["model.cut_size=128", "data.slice_size=96"], r"model\.cut_size=128 leaves no local window .* 96"),
        (["model.cut_size=32", "data.slice_size=32"], r"must be smaller than data.crop_size"),
        (["train.backend=nccl"], r"train\.backend=nccl needs train\.use_gpu=true"),
        (["data.dims=3"], r"data\.dims=3 needs data\.patch_size"),
        (["data.patch_size=[80,112,112]"], r"patch_size is only used with data\.dims=3"),
        (["method=mean_teacher", "stages=[p1,p2,ft]"], r"method=mean_teacher trains one stage"),
        (["stages=[ft,p1]"], r"in the order p1, p2, ft"),
        (["ft.weak_threshold=0.99"], r"weak_threshold=0.99 must be <= ft\.strong_threshold"),
        (["ft.scale_range=[1.2,0.9]"], r"ft\.scale_range must be \[low, high\] with 0 < low <= high"),
        (["schedule.p1.nesterov=true", "schedule.p1.momentum=0"], r"nesterov=true needs momentum > 0"),
        (["train.report_every=30"], r"checkpoint_every=1000 must be a multiple of train\.report_every=30"),
        (["data.slice_size.x=3"], r"data\.slice_size"),
        (["eval.window=[16,16,16]"], r"eval\.window is the 3-D sliding window"),
    ],
)
def test_bad_values_name_the_key_value_and_constraint(overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, overrides)


def test_malformed_override_and_unknown_preset():
    with pytest.raises(ConfigError, match="key.subkey=value"):
        load_config(None, ["train.num_workers"])
    with pytest.raises(ConfigError, match="neither a file nor a preset.*cpu-demo"):
        load_config("no-such-preset", [])


def test_error_names_the_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("ft:\n  num_querries: 3\n")
    with pytest.raises(ConfigError, match=r"'ft\.num_querries' \(in .*mine\.yaml\).*'ft\.num_queries'"):
        load_config(str(path), [])


def test_yaml_round_trip_is_exact(tmp_path):
    cfg = load_config("la-3d", ["ft.num_queries=32", "data.label_ratio=0.2"])
    path = tmp_path / "run" / "config.yaml"
    write_file(str(path), cfg.to_yaml())  # as train writes a run's config.yaml
    again = load_config(str(path), [])
    assert again == cfg and again.hash() == cfg.hash()
    assert yaml.safe_load(cfg.to_yaml()) == cfg.to_dict()
    # a dumped config can still take a pair override (resume with a different split)
    assert load_config(str(path), ["data.labelled_patients=2"]).data.label_ratio is None


def test_dump_never_writes_credentials(tmp_path):
    cfg = load_config(None, ["data.storage_options.secret=s3cr3t", "data.storage_options.key=AKIAXYZ"])
    text = cfg.to_yaml()
    assert "s3cr3t" not in text and "AKIAXYZ" not in text and "***" in text
    assert "s3cr3t" not in cfg.pretty()
    assert cfg.data.storage_options["secret"] == "s3cr3t"  # the live object keeps them


@pytest.mark.parametrize("name", ["cpu-demo", "cpu-quality", "acdc-2d", "la-3d"])
def test_presets_load_and_validate(name):
    assert name in preset_names()
    cfg = load_config(name, [])
    assert load_config(f"{name}.yaml", []) == cfg
    assert config_from_dict(cfg.to_dict()) == cfg
    assert cfg.model.cut_size <= min(cfg.data.patch_size or (cfg.data.slice_size,))


def test_preset_values():
    demo = load_config("cpu-demo", [])
    assert demo.data.slice_size == 64 and demo.model.preset == "cpu"
    assert demo.train.num_workers == 2 and demo.train.cpus_per_worker == 0.5
    assert all(demo.stage(s).iterations <= 300 for s in demo.stages)
    acdc = load_config("acdc-2d", [])
    assert acdc.train.num_workers == 1 and acdc.distill.teacher_temperature == 0.01
    assert acdc.distill.resolved_bank_size(acdc.data.pretrain_batch) == 36
    assert acdc.train.use_gpu and acdc.stage("p2").iterations == 30000
    la = load_config("la-3d", [])
    assert la.data.dims == 3 and la.model.dims == 3 and la.data.patch_size == (80, 112, 112)
    assert la.distill.teacher_temperature == 0.6 and la.model.global_dim == 128
    assert la.train.num_workers == 1 and la.distill.resolved_bank_size(la.data.pretrain_batch) == 36
    assert la.eval_window == (80, 112, 112) and la.ft.mix == "classmix"


def test_hash_is_stable_and_ignores_bookkeeping():
    a = load_config("cpu-demo", [])
    b = load_config("cpu-demo", [])
    assert a.hash() == b.hash() and len(a.hash()) == 16
    assert a.hash() == load_config("cpu-demo", ["train.run_name=x", "train.storage_path=s3://b/p"]).hash()
    assert a.hash() != load_config("cpu-demo", ["ft.num_queries=65"]).hash()
    # the order keys were written in does not matter
    tree = a.to_dict()
    reordered = {k: tree[k] for k in reversed(list(tree))}
    reordered["ft"] = {k: tree["ft"][k] for k in reversed(list(tree["ft"]))}
    assert config_from_dict(reordered).hash() == a.hash()


def test_pretty_lists_every_key_and_marks_changes():
    cfg = load_config(None, ["ft.num_queries=64"])
    text = cfg.pretty()
    flat_keys = [k for k in all_keys() if not k.startswith("data.storage_options")]
    for key in flat_keys:
        assert key in text
    changed = [line for line in text.splitlines() if line.startswith("*")]
    assert len(changed) == 1 and "ft.num_queries" in changed[0]


def test_resolved_values():
    cfg = load_config(None, ["train.num_workers=4", "data.pretrain_labelled_batch=2"])
    assert cfg.distill.resolved_bank_size(cfg.data.pretrain_batch * cfg.train.num_workers) == 6 * (2 + 3) * 4
    assert cfg.train.resolved_backend == "gloo"
    assert cfg.train.resolved_storage_path.startswith("/")
    assert load_config(None, ["train.storage_path=s3://b/runs"]).train.resolved_storage_path == "s3://b/runs"


def test_cli_arguments_feed_load_config():
    import argparse

    from action_ray.config import add_config_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(["--config", "cpu-demo", "ft.num_queries=8", "train.num_workers=1"])
    cfg = config_from_args(args)
    assert cfg.ft.num_queries == 8 and cfg.train.num_workers == 1 and cfg.data.slice_size == 64
    assert config_from_args(parser.parse_args([])) == Config()


def test_head_sizes_match_the_model_packages_names():
    from action_ray.model import HeadSizes, MODEL_PRESETS

    # published: 2-D d_g 512 / P 8 / rep 512; 3-D d_g 128 / P 4 / rep 128 (method.md §7)
    paper = Config().model.head_sizes()
    assert HeadSizes(**paper) == HeadSizes(global_hidden=256, global_dim=512, global_pool=1, local_pool=8,
                                           representation_dim=512)
    assert HeadSizes(**load_config("la-3d", []).model.head_sizes()) == HeadSizes(
        global_hidden=128, global_dim=128, global_pool=1, local_pool=4, representation_dim=128)
    demo = load_config("cpu-demo", [])
    assert HeadSizes(**demo.model.head_sizes()) == HeadSizes(
        global_hidden=128, global_dim=128, global_pool=1, local_pool=4, representation_dim=64)
    assert MODEL_PRESETS[demo.model.preset_or_widths].widths == (8, 16, 32, 64, 128)


@pytest.mark.parametrize("name", ["../../x", "/abs", "a/b", "..", ".hidden", "a b", "x" * 201, ""])
def test_names_that_become_paths_are_confined(name):
    with pytest.raises(ConfigError, match="train.run_name=.*letters, digits"):
        load_config("cpu-demo", [f"train.run_name={name!r}" if name else "train.run_name=''"])


def test_safe_names_pass_and_tune_names_are_checked_too():
    assert load_config("cpu-demo", ["train.run_name=action-1.v2_x"]).train.run_name == "action-1.v2_x"
    from action_ray.tuning.space import load_sweep

    with pytest.raises(ConfigError, match="tune.name"):
        load_sweep("tune-cpu", ["tune.name=../escape"])


@pytest.mark.parametrize("override, message", [
    ("train.num_workers=true", "train.num_workers: True is a boolean, but num_workers takes a number (from an override)"),
    ("data.crop_foreground_p=false", "data.crop_foreground_p: False is a boolean"),
    ("train.deterministic=1", "train.deterministic: 1 is not a boolean; write true or false (from an override)"),
    ("train.deterministic=yes", "train.deterministic: 'yes' is not a boolean"),
    ("ft.geo_aug=off", "ft.geo_aug: 'off' is not a boolean"),
])
def test_booleans_and_numbers_do_not_stand_in_for_each_other(override, message):
    with pytest.raises(ConfigError) as caught:
        load_config("cpu-demo", [override])
    assert message in str(caught.value) and "in preset" not in str(caught.value)


def test_strict_types_keep_the_ordinary_values_and_blame_the_file(tmp_path):
    config = load_config("cpu-demo", ["train.deterministic=true", "ft.unsup_weight=1", "train.run_name=on"])
    assert config.train.deterministic is True and config.ft.unsup_weight == 1.0 and config.train.run_name == "on"
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  use_gpu: no\n")
    with pytest.raises(ConfigError, match=f"train.use_gpu: 'no' is not a boolean.*in {path}"):
        load_config(str(path))
