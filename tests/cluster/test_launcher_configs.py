"""cluster/aws.yaml and cluster/gcp.yaml validate against the autoscaler schema that ships inside the
installed ``ray`` package, and their node types keep the studio's scheduling contract: a CPU-only
head, a training GPU type that alone advertises ``training`` and scales from 0, a serving GPU type that
alone advertises ``serving`` — and the work that asks for those resources can be placed on them."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from studio.settings import StudioSettings

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
LAUNCHER_CONFIGS = [CLUSTER / "aws.yaml", CLUSTER / "gcp.yaml"]
ENV_EXAMPLE = CLUSTER / "studio.env.example"


@pytest.fixture(scope="module")
def ray_schema() -> dict:
    path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    assert path.is_file(), f"the ray package has no autoscaler schema at {path}"
    return json.loads(path.read_text())


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_validates_against_ray_schema(path: Path, ray_schema: dict):
    config = load(path)
    jsonschema.validate(config, ray_schema)
    # What `ray up` does before touching the cloud: merge the provider's defaults, then check the
    # result (the same schema) and its node types.
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["available_node_types"]["gpu_training"]["max_workers"] == 8


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_schema_check_can_fail(path: Path, ray_schema: dict):
    config = load(path)
    config["available_node_types"]["gpu_training"]["resources"]["training"] = "eight"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, ray_schema)
    config = load(path)
    config["available_node_types"]["gpu_serving"]["max_wokers"] = 4  # a typo the schema refuses
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, ray_schema)


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_node_types_keep_training_and_serving_apart(path: Path):
    config = load(path)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert not {"training", "serving"} & set(head["resources"]), "the head must take no GPU work"

    training = [t for t in types.values() if "training" in t["resources"]]
    serving = [t for t in types.values() if "serving" in t["resources"]]
    assert len(training) == 1 and len(serving) == 1
    assert not {"serving"} & set(training[0]["resources"]) and "training" not in serving[0]["resources"]
    tr = training[0]
    assert tr["resources"]["GPU"] == 8 and tr["min_workers"] == 0 and tr["max_workers"] == 8
    assert tr["resources"]["training"] == tr["resources"]["GPU"]  # one training unit per GPU worker
    sv = serving[0]
    assert sv["resources"]["GPU"] >= 1 and sv["min_workers"] >= 1
    assert config["idle_timeout_minutes"] > 0
    assert config["max_workers"] >= tr["max_workers"] + sv["max_workers"]


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_nodes_install_the_project_and_export_its_settings(path: Path):
    config = load(path)
    setup = config["setup_commands"]
    torch_at = next(i for i, c in enumerate(setup) if '"torch==' in c)
    project_at = next(i for i, c in enumerate(setup) if "[gpu]" in c)
    assert torch_at < project_at, "torch must be installed before the project (no other build pulled)"
    assert config["file_mounts"]["/home/ray/studio.env"] == "cluster/studio.env"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in config[key] if "ray start" in c)
        assert ". /home/ray/studio.env" in start and start.index("studio.env") < start.index("ray start")
    # The head deploys the studio with a Serve config that exists and validates (tests/test_configs.py).
    up = next(c for c in config["head_start_ray_commands"] if "studio up" in c)
    serve_config = up.split("--config", 1)[1].split()[0]
    assert (REPO / serve_config).is_file()
    docker_python = config["docker"]["image"].split("-py", 1)[1][:3]
    assert docker_python == "311" and ray.__version__ in config["docker"]["image"]


def test_env_example_names_only_known_settings(monkeypatch):
    env = env_example()
    fields = {f"STUDIO_{name.upper()}" for name in StudioSettings.model_fields}
    unknown = sorted(k for k in env if k.startswith("STUDIO_") and k not in fields)
    assert not unknown, f"cluster/studio.env.example sets unknown settings: {unknown}"
    for key in ("STUDIO_DATABASE_URL", "STUDIO_REDIS_URL", "STUDIO_ARTIFACTS_URI"):
        assert key in env
    assert env["STUDIO_DATABASE_URL"].startswith("postgresql://")
    assert env["STUDIO_ARTIFACTS_URI"].startswith(("s3://", "gs://"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = StudioSettings()
    assert settings.train_worker_resources == {"training": 1.0}
    assert settings.cluster_max_gpus == 64


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_declared_work_fits_the_node_types(path: Path, monkeypatch):
    """Every model replica of the cluster's Serve config, and a training worker of a GPU recipe under
    the cluster's settings, fit some worker type — else they would wait forever for a node that the
    autoscaler can never make."""
    from deployments.app import AppArgs
    from studio.cluster import worker_resources
    from studio.recipes import load_recipe
    from studio.stack import load_serve_config
    from studio.train.spec import TrainSpec

    config = load(path)
    up = next(c for c in config["head_start_ray_commands"] if "studio up" in c)
    app = load_serve_config(REPO / up.split("--config", 1)[1].split()[0])
    workers = [t["resources"] for name, t in config["available_node_types"].items()
               if name != config["head_node_type"]]

    def fits(demand: dict[str, float]) -> bool:
        return any(all(res.get(k, 0) >= v for k, v in demand.items() if v) for res in workers)

    models = AppArgs.model_validate(app["args"]).models
    assert models, "the cluster's Serve config serves no model"
    for m in models:
        demand = {"CPU": m.num_cpus, "GPU": m.num_gpus, **m.resources}
        assert m.resources.get("serving"), "model replicas must reserve `serving`"
        assert fits(demand), f"model {m.engine.name} asks {demand}, which no worker type offers"
        training_type = next(r for r in workers if "training" in r)
        assert not all(training_type.get(k, 0) >= v for k, v in demand.items() if v), \
            f"model {m.engine.name} would fit on the training type"

    for key, value in env_example().items():
        monkeypatch.setenv(key, value)
    spec = load_recipe(REPO / "configs" / "train" / "sft_qwen05b_deepspeed_gpu.yaml", TrainSpec)
    demand = worker_resources(spec.resources, StudioSettings())
    assert demand.get("training") == 1 and demand.get("GPU", 0) >= 1
    assert fits(demand)
    serving_type = next(r for r in workers if "serving" in r)
    assert not all(serving_type.get(k, 0) >= v for k, v in demand.items()), \
        "a training worker must not fit on the serving type"
