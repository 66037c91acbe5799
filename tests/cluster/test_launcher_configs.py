"""cluster/aws.yaml and cluster/gcp.yaml validate against the autoscaler schema that ships inside the
installed ``ray`` package, and their node types keep the studio's scheduling contract: a CPU-only
head, a training GPU type that alone advertises ``training`` and scales from 0, a serving GPU type that
alone advertises ``serving`` — and the work that asks for those resources can be placed on them."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shlex
import subprocess
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
SECRETS_EXAMPLE = CLUSTER / "studio-secrets.env.example"
SECRETS_MOUNT = "/home/ray/studio-secrets.env"


@pytest.fixture(scope="module")
def ray_schema() -> dict:
    path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    assert path.is_file(), f"the ray package has no autoscaler schema at {path}"
    return json.loads(path.read_text())


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def env_example() -> dict[str, str]:
    """What the head's `studio up` sees: the node settings and the secrets."""
    return {**env_file(ENV_EXAMPLE), **env_file(SECRETS_EXAMPLE)}


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
    unknown = sorted(k for k in env_file(SECRETS_EXAMPLE) if k.startswith("STUDIO_") and k not in fields)
    assert not unknown, f"cluster/studio-secrets.env.example sets unknown settings: {unknown}"
    for key in ("STUDIO_DATABASE_URL", "STUDIO_REDIS_URL", "STUDIO_ARTIFACTS_URI", "STUDIO_ADMIN_KEY"):
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
    from studio.serving.app_config import AppArgs
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


# --- Secrets reach only `studio up` (docs/security.md, "Secrets reach only the processes that need
# them"): what is exported before `ray start` is inherited by every Ray process on the node.

def is_secret(name: str, value: str) -> bool:
    """A variable no Ray process may inherit: the admin key, a provider key, a URL with a password
    (the database's; Redis' or MLflow's when they have one). RAY_AUTH_TOKEN is not on the list:
    `ray start` itself needs it on every node."""
    if name == "STUDIO_ADMIN_KEY" or name.endswith("_API_KEY"):
        return True
    if "://" in value:
        from urllib.parse import urlsplit

        return bool(urlsplit(value).password)
    return False


def secrets_in(env: dict[str, str]) -> list[str]:
    return sorted(name for name, value in env.items() if is_secret(name, value))


def sourced_before(command: str, marker: str) -> list[str]:
    """The files a start command sources (`. FILE`) before ``marker``."""
    head = command.split(marker, 1)[0]
    return re.findall(r"(?:^|&&|;)\s*\.\s+(\S+)", head)


def example_of(config: dict, remote: str) -> Path:
    """The committed example of the local file that ``remote`` is mounted from."""
    return REPO / (config["file_mounts"][remote] + ".example")


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_no_secret_is_exported_before_ray_start(path: Path):
    config = load(path)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in config[key] if "ray start" in c)
        files = sourced_before(start, "ray start")
        assert files == ["/home/ray/studio.env"], f"{key} sources {files} before `ray start`"
        leaked = secrets_in(env_file(example_of(config, files[0])))
        assert not leaked, f"{key}: {leaked} would be inherited by every Ray process"
    assert not secrets_in(env_file(ENV_EXAMPLE))
    assert "RAY_AUTH_TOKEN" in env_file(ENV_EXAMPLE), "`ray start` needs the token on every node"


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_only_studio_up_sources_the_secrets(path: Path):
    config = load(path)
    assert config["file_mounts"][SECRETS_MOUNT] == "cluster/studio-secrets.env"
    assert example_of(config, SECRETS_MOUNT) == SECRETS_EXAMPLE
    commands = [*config["head_start_ray_commands"], *config["worker_start_ray_commands"],
                *config["setup_commands"], *config["worker_setup_commands"]]
    sourcing = [c for c in commands if f". {SECRETS_MOUNT}" in c]
    assert len(sourcing) == 1 and "ray start" not in sourcing[0]
    assert SECRETS_MOUNT in sourced_before(sourcing[0], "studio up")
    # The secrets file holds what `studio up` hands on: the database URL, the admin key, provider keys.
    secrets = env_file(SECRETS_EXAMPLE)
    assert {"STUDIO_DATABASE_URL", "STUDIO_ADMIN_KEY"} <= set(secrets_in(secrets))
    assert "OPENAI_API_KEY" in SECRETS_EXAMPLE.read_text()
    assert "/cluster/studio-secrets.env" in (REPO / ".gitignore").read_text().split()


def test_secret_check_can_fail():
    assert secrets_in({"STUDIO_ADMIN_KEY": "sk-studio-x", "OPENAI_API_KEY": "sk-x",
                       "STUDIO_DATABASE_URL": "postgresql://studio:pw@db:5432/studio",
                       "STUDIO_REDIS_URL": "redis://:pw@cache:6379/0"}) == [
        "OPENAI_API_KEY", "STUDIO_ADMIN_KEY", "STUDIO_DATABASE_URL", "STUDIO_REDIS_URL"]
    assert not secrets_in({"STUDIO_DATABASE_URL": "postgresql://studio@db:5432/studio",
                           "STUDIO_REDIS_URL": "redis://cache:6379/0", "RAY_AUTH_TOKEN": "t"})
    # The old layout: one file, sourced before `ray start`, that held the admin key.
    old = "set -a && . /home/ray/studio.env && . /home/ray/studio-secrets.env && set +a && ray start --head"
    assert sourced_before(old, "ray start") == ["/home/ray/studio.env", SECRETS_MOUNT]


def bootstrap_config(config: dict) -> dict:
    """The head's autoscaler config as `ray up` writes it (ray.autoscaler._private.commands): the same
    mounts, now at their remote paths, plus the bootstrap file itself."""
    remote = copy.deepcopy(config)
    remote["file_mounts"] = {p: p for p in config["file_mounts"]}
    return remote


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_workers_never_receive_the_secrets_file(path: Path, tmp_path: Path, capsys):
    spec = importlib.util.spec_from_file_location("head_only_mounts", CLUSTER / "head_only_mounts.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = load(path)
    (setup,) = [c for c in config["head_setup_commands"] if "head_only_mounts.py" in c]
    argv = shlex.split(setup)[2:]
    assert argv[0] == "~/ray_bootstrap_config.yaml" and argv[1:] == [SECRETS_MOUNT]
    boot = tmp_path / "ray_bootstrap_config.yaml"
    boot.write_text(json.dumps(bootstrap_config(config)))
    assert mod.main([str(boot), *argv[1:]]) == 0
    after = json.loads(boot.read_text())
    # What the autoscaler copies to each worker: everything but the secrets.
    assert set(after["file_mounts"]) == set(config["file_mounts"]) - {SECRETS_MOUNT}
    assert "/home/ray/studio.env" in after["file_mounts"]
    assert after["worker_start_ray_commands"] == config["worker_start_ray_commands"]
    assert SECRETS_MOUNT in capsys.readouterr().out
    assert mod.main([str(boot), *argv[1:]]) == 0  # `ray up --no-restart` runs it again: harmless
    assert json.loads(boot.read_text()) == after


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_checkout_sync_leaves_the_settings_files_behind(path: Path, tmp_path: Path):
    """`ray up` rsyncs the checkout to /home/ray/studio on every node with the config's excludes (the
    arguments ray's command runner builds); the settings files travel only as their own mounts."""
    from ray.autoscaler._private.command_runner import SSHCommandRunner

    config = load(path)
    args = SSHCommandRunner._create_rsync_filter_args(None, {"rsync_exclude": config["rsync_exclude"]})
    checkout = tmp_path / "checkout"
    (checkout / "cluster").mkdir(parents=True)
    for name in ("studio.env", "studio-secrets.env", "aws.yaml"):
        (checkout / "cluster" / name).write_text("X=1\n")
    node = tmp_path / "node"
    node.mkdir()
    subprocess.run(["rsync", "-a", *args, f"{checkout}/", f"{node}/studio/"], check=True)
    assert sorted(p.name for p in (node / "studio" / "cluster").iterdir()) == ["aws.yaml"]
    # A file mount of the secrets file itself still arrives (on the head).
    subprocess.run(["rsync", "-a", *args, str(checkout / "cluster" / "studio-secrets.env"),
                    str(node / "studio-secrets.env")], check=True)
    assert (node / "studio-secrets.env").read_text() == "X=1\n"
