"""The files in cluster/ are accepted by the tools that will read them, checked offline.

* aws.yaml / gcp.yaml: the JSON schema shipped inside the installed ray package, then Ray's own
  ``prepare_config`` + ``validate_config`` (what ``ray up`` runs before touching the cloud).
* kuberay-rayjob.yaml: the RayJob field names of the KubeRay v1 CRD (ray-operator/apis/ray/v1,
  rayjob_types.go / raycluster_types.go; ``authOptions`` from KubeRay 1.5.1), GPU limits, and an
  entrypoint whose config overrides load.
* runtime_env.yaml: ``ray.runtime_env.RuntimeEnv`` accepts it and it uses only known fields.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from action_ray.config import load_config

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
LAUNCHER_FILES = ["aws.yaml", "gcp.yaml"]

# Field names of the KubeRay v1 CRD (json tags of RayJobSpec, RayClusterSpec, HeadGroupSpec,
# WorkerGroupSpec). A typo in the manifest would be dropped or rejected by the API server.
RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
    "clusterSelector", "submitterConfig", "managedBy", "deletionPolicy", "entrypoint",
    "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus",
    "entrypointNumGpus", "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend",
}
RAYCLUSTER_SPEC_FIELDS = {
    "suspend", "managedBy", "autoscalerOptions", "headServiceAnnotations", "enableInTreeAutoscaling",
    "gcsFaultToleranceOptions", "headGroupSpec", "rayVersion", "workerGroupSpecs", "authOptions",
}
HEAD_GROUP_FIELDS = {"template", "headService", "enableIngress", "rayStartParams", "serviceType"}
WORKER_GROUP_FIELDS = {
    "suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
    "rayStartParams", "template", "scaleStrategy", "numOfHosts",
}


def _load(name: str):
    return yaml.safe_load((CLUSTER / name).read_text())


def _ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_launcher_config_matches_rays_shipped_schema(name):
    config = _load(name)
    jsonschema.validate(config, _ray_schema())
    # and a broken copy is rejected, so the check has teeth
    broken = copy.deepcopy(config)
    broken["available_node_types"]["head"]["node_config_typo"] = {}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, _ray_schema())


@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_launcher_config_passes_rays_own_preparation(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(_load(name)))
    validate_config(prepared)
    assert prepared["head_node_type"] == "head"


@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_launcher_has_autoscaling_gpu_workers_and_installs_the_package(name):
    config = _load(name)
    types = config["available_node_types"]
    gpu_types = {k: v for k, v in types.items() if v["resources"].get("GPU", 0) >= 1}
    assert gpu_types, "no GPU worker group"
    for node_type in gpu_types.values():
        assert node_type["min_workers"] == 0 < node_type["max_workers"]
    assert sum(t["max_workers"] for t in gpu_types.values()) <= config["max_workers"]
    assert types["head"]["resources"].get("GPU", 0) == 0
    commands = " ".join(config["setup_commands"])
    assert "torch" in commands and "action-ray" in commands
    start = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert start.count("RAY_AUTH_MODE=token") == 2
    assert "~/.ray/auth_token" in config["file_mounts"]
    ray_version = re.search(r"ray:(\d+\.\d+)\.\d+", config["docker"]["image"]).group(1)
    import ray

    assert ray.__version__.startswith(ray_version), "cluster image and installed ray differ"


def test_gcp_gpu_nodes_can_be_scheduled():
    types = _load("gcp.yaml")["available_node_types"]
    for name, node_type in types.items():
        if node_type["resources"].get("GPU"):
            cfg = node_type["node_config"]
            assert {"onHostMaintenance": "TERMINATE"} in cfg["scheduling"], name
            bundled = cfg["machineType"].startswith(("a2-", "a3-", "g2-"))
            assert bundled or cfg.get("guestAccelerators"), f"{name} has no GPU attached"


def test_rayjob_manifest_structure():
    job = _load("kuberay-rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert set(spec) <= RAYJOB_SPEC_FIELDS, set(spec) - RAYJOB_SPEC_FIELDS
    assert spec["entrypoint"].startswith("action-ray train --config ")
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert isinstance(runtime_env, dict) and runtime_env["env_vars"]
    _check_runtime_env(runtime_env)

    cluster = spec["rayClusterSpec"]
    assert set(cluster) <= RAYCLUSTER_SPEC_FIELDS, set(cluster) - RAYCLUSTER_SPEC_FIELDS
    import ray

    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]
    assert set(head) <= HEAD_GROUP_FIELDS and "rayStartParams" in head
    head_container = head["template"]["spec"]["containers"][0]
    assert head_container["image"] and head_container["resources"]["limits"]
    assert "nvidia.com/gpu" not in head_container["resources"]["limits"]

    assert cluster["workerGroupSpecs"]
    for group in cluster["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP_FIELDS, set(group) - WORKER_GROUP_FIELDS
        assert {"groupName", "rayStartParams", "template", "minReplicas", "maxReplicas"} <= set(group)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        container = group["template"]["spec"]["containers"][0]
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        assert int(limits["nvidia.com/gpu"]) >= 1 and limits["nvidia.com/gpu"] == requests["nvidia.com/gpu"]
        assert container["image"] == head_container["image"]


def test_rayjob_entrypoint_config_is_valid():
    """The overrides in the manifest's command must load, or the job dies after scheduling GPUs."""
    words = shlex.split(_load("kuberay-rayjob.yaml")["spec"]["entrypoint"])
    preset = words[words.index("--config") + 1]
    overrides = [w for w in words if "=" in w]
    cfg = load_config(preset, overrides)
    assert cfg.train.use_gpu and cfg.train.resolved_backend == "nccl"
    assert cfg.train.storage_path.startswith("s3://")
    group = _load("kuberay-rayjob.yaml")["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert group["replicas"] == cfg.train.num_workers


def _check_runtime_env(env: dict) -> None:
    from ray.runtime_env import RuntimeEnv

    unknown = set(env) - set(RuntimeEnv.known_fields)
    assert not unknown, f"runtime_env keys Ray does not know: {unknown}"
    RuntimeEnv(**env)  # raises on wrong types, e.g. a non-string env var


def test_runtime_env_example_is_accepted_by_ray():
    env = _load("runtime_env.yaml")
    _check_runtime_env(env)
    assert "." == env["working_dir"] and ".git" in env["excludes"]
    with pytest.raises(AssertionError):
        _check_runtime_env({"envvars": {"A": "1"}})
    with pytest.raises(TypeError):
        _check_runtime_env({"env_vars": {"A": 1}})


SECRET_PATTERNS = [r"AKIA[0-9A-Z]{16}", r"aws_secret_access_key\s*[:=]\s*\S+", r"-----BEGIN"]


@pytest.mark.parametrize("name", sorted(p.name for p in CLUSTER.iterdir() if p.is_file()))
def test_no_credentials_in_cluster_files(name):
    text = (CLUSTER / name).read_text()
    for pattern in SECRET_PATTERNS:
        assert not re.search(pattern, text, re.IGNORECASE), f"{name} looks like it holds a secret"


def test_every_placeholder_is_explained_in_the_readme():
    readme = (CLUSTER / "README.md").read_text()
    for path in CLUSTER.iterdir():
        if path.name == "README.md" or not path.is_file():
            continue
        for placeholder in set(re.findall(r"REPLACE_ME_[A-Z_]+", path.read_text())):
            assert placeholder in readme, f"{placeholder} ({path.name}) is not explained in README.md"


def test_ingest_job_submits_a_valid_ray_scheduled_ingest():
    """The job example's ``action-ray ingest`` words parse with the real CLI and use Ray."""
    from action_ray.cli import build_parser

    text = (CLUSTER / "ingest-job.sh").read_text()
    command = text[text.index("action-ray ingest"):].split("\n")[0]
    words = shlex.split(command.replace('"$SRC"', "s3://b/raw").replace('"$DST"', "s3://b/x.zarr")
                        .replace('"$LAYOUT"', "acdc"))
    args = build_parser().parse_args(words[1:])
    assert (args.scheduler, args.layout, args.src, args.dst) == ("ray", "acdc", "s3://b/raw", "s3://b/x.zarr")
    assert "--runtime-env cluster/runtime_env.yaml" in text and "set -euo pipefail" in text
