"""cluster/kuberay/: the RayService and the training RayCluster have the fields KubeRay requires,
the autoscaler on, GPU worker groups with their custom resources, secrets only by reference; the
RayService's serveConfigV2 is exactly what ``studio.cluster`` generates from the local Serve config,
and its import path resolves to the studio's app builder."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pytest
import yaml

from studio import cluster

REPO = Path(__file__).resolve().parents[2]
KUBERAY = REPO / "cluster" / "kuberay"
SECRET = "llm-studio-secrets"
# Settings that hold credentials: in a manifest they may only come from a Secret.
SECRET_ENV = {"STUDIO_DATABASE_URL", "STUDIO_REDIS_URL", "STUDIO_ADMIN_KEY", "RAY_AUTH_TOKEN",
              "OPENAI_API_KEY", "ANTHROPIC_API_KEY"}
# What no pod that runs jobs gets; on the RayService only the gateway group has the provider keys.
SERVE_ONLY = {"STUDIO_ADMIN_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"}
PROVIDER_KEYS = {"openai-api-key", "anthropic-api-key"}


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((KUBERAY / name).read_text()) if d]


def service() -> dict:
    (doc,) = docs("rayservice.yaml")
    return doc


def training() -> dict:
    (doc,) = docs("raycluster-training.yaml")
    return doc


def cluster_specs() -> list[tuple[str, dict]]:
    return [("rayservice", service()["spec"]["rayClusterConfig"]), ("training", training()["spec"])]


def containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_kinds_and_api_versions():
    assert (service()["apiVersion"], service()["kind"]) == ("ray.io/v1", "RayService")
    assert (training()["apiVersion"], training()["kind"]) == ("ray.io/v1", "RayCluster")
    kinds = {d["kind"]: d for d in docs("config.yaml")}
    assert set(kinds) == {"ConfigMap", "ServiceAccount"}
    for d in (service(), training(), *kinds.values()):
        assert d["metadata"]["name"]


@pytest.mark.parametrize("which,spec", cluster_specs(), ids=lambda x: x if isinstance(x, str) else "")
def test_cluster_spec_required_fields_and_autoscaling(which: str, spec: dict):
    import ray

    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert head["rayStartParams"].get("num-gpus") == "0"  # the head takes no GPU work
    assert head["template"]["spec"]["containers"][0]["image"]
    assert spec["workerGroupSpecs"], f"{which}: no worker group"
    for group in spec["workerGroupSpecs"]:
        for key in ("groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"):
            assert key in group, f"{which}/{group.get('groupName')}: missing {key}"
        assert group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]
        (container,) = group["template"]["spec"]["containers"]
        if group["groupName"] == "gateway-workers":  # CPU pods: the gateway takes no GPU
            assert "nvidia.com/gpu" not in container["resources"]["limits"]
            assert group["rayStartParams"].get("num-gpus") == "0"
        else:
            gpus = int(container["resources"]["limits"]["nvidia.com/gpu"])
            assert gpus >= 1 and container["resources"]["requests"]["nvidia.com/gpu"] == str(gpus)
        for c in containers(spec):
            assert c["image"] == container["image"], "every pod must run the same studio image"


def custom_resources(group: dict) -> dict[str, float]:
    # KubeRay passes rayStartParams through to `ray start --resources='{...}'`.
    raw = group["rayStartParams"]["resources"]
    return yaml.safe_load(yaml.safe_load(raw))


def test_serving_and_training_groups_are_apart():
    serving = service_group("gpu-serving")
    (train,) = training()["spec"]["workerGroupSpecs"]
    assert set(custom_resources(serving)) == {"serving"}
    assert set(custom_resources(train)) == {"training"}
    gpus = int(train["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    assert custom_resources(train)["training"] == gpus and gpus == 8
    assert (train["minReplicas"], train["maxReplicas"]) == (0, 8)
    assert serving["minReplicas"] >= 1
    config = next(d for d in docs("config.yaml") if d["kind"] == "ConfigMap")["data"]
    assert yaml.safe_load(config["STUDIO_TRAIN_WORKER_RESOURCES"]) == {"training": 1}
    assert int(config["STUDIO_CLUSTER_MAX_GPUS"]) == gpus * train["maxReplicas"]


@pytest.mark.parametrize("which,spec", cluster_specs(), ids=lambda x: x if isinstance(x, str) else "")
def test_secrets_only_by_reference(which: str, spec: dict):
    config_names = {d["metadata"]["name"] for d in docs("config.yaml") if d["kind"] == "ConfigMap"}
    for c in containers(spec):
        env = {e["name"]: e for e in c["env"]}
        assert {"STUDIO_DATABASE_URL", "STUDIO_REDIS_URL", "RAY_AUTH_TOKEN"} <= set(env)
        for name in SECRET_ENV & set(env):
            assert "value" not in env[name], f"{which}: {name} is written into the manifest"
            ref = env[name]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == SECRET and ref["key"]
        assert [r["configMapRef"]["name"] for r in c["envFrom"]] == sorted(config_names)
    config = next(d for d in docs("config.yaml") if d["kind"] == "ConfigMap")["data"]
    assert not SECRET_ENV & set(config), "a secret setting sits in the ConfigMap"
    assert config["STUDIO_ARTIFACTS_URI"].startswith(("s3://", "gs://"))


def env_names(spec: dict) -> list[set[str]]:
    return [{e["name"] for e in c.get("env", [])} for c in containers(spec)]


def secret_keys(spec: dict) -> set[str]:
    return {e["valueFrom"]["secretKeyRef"]["key"] for c in containers(spec) for e in c.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})}


def test_admin_and_provider_keys_stay_out_of_the_training_cluster():
    """Job drivers and Ray Train workers run on the training RayCluster, and every process of a pod
    inherits its environment: the admin key and provider keys are not in it (a job spends on its
    own key, which the scheduler puts in its runtime_env)."""
    train = training()["spec"]
    for names in env_names(train):
        assert not SERVE_ONLY & names, f"training pod gets {sorted(SERVE_ONLY & names)}"
        assert not {n for n in names if n.endswith("_API_KEY")}
    assert not {"admin-key", "openai-api-key", "anthropic-api-key"} & secret_keys(train)
    assert secret_keys(train) == {"database-url", "redis-url", "ray-auth-token"}
    # ... and the check sees a key that comes back.
    spec = training()["spec"]
    spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "openai-api-key"}}})
    assert any(SERVE_ONLY & names for names in env_names(spec))


def service_group(name: str) -> dict:
    (group,) = [g for g in service()["spec"]["rayClusterConfig"]["workerGroupSpecs"] if g["groupName"] == name]
    return group


def group_secret_keys(group: dict) -> set[str]:
    return {e["valueFrom"]["secretKeyRef"]["key"] for c in group["template"]["spec"]["containers"]
            for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}


def test_only_the_gateway_group_has_provider_keys_and_no_pod_the_admin_key():
    """Every process of a pod inherits its environment: on the RayService the provider keys are in
    the gateway worker group's pods alone (the gateway replicas, pinned there by a custom resource
    nothing else asks for, read them at call time), and no pod has the admin key (the API and the
    scheduler ask the gateway's handle for model names)."""
    rc = service()["spec"]["rayClusterConfig"]
    groups = {"head": rc["headGroupSpec"], **{g["groupName"]: g for g in rc["workerGroupSpecs"]}}
    assert set(groups) == {"head", "gateway-workers", "gpu-serving"}
    for name, group in groups.items():
        keys = group_secret_keys(group)
        assert "admin-key" not in keys, f"{name} pods get the admin key"
        if name == "gateway-workers":
            assert PROVIDER_KEYS <= keys and keys - PROVIDER_KEYS == {"database-url", "redis-url", "ray-auth-token"}
        else:
            assert not PROVIDER_KEYS & keys, f"{name} pods get {sorted(PROVIDER_KEYS & keys)}"
            assert keys == {"database-url", "redis-url", "ray-auth-token"}
    gateway = groups["gateway-workers"]
    assert custom_resources(gateway) == {"gateway": 2} and gateway["minReplicas"] >= 1
    assert all("gateway" not in custom_resources(g) for n, g in groups.items() if n not in ("head", "gateway-workers"))
    assert "resources" not in rc["headGroupSpec"]["rayStartParams"]
    # The gateway replicas reserve it, so they run there and only there; nothing else asks for it.
    from studio.serving.app_config import AppArgs
    from studio.recipes import validate_spec

    (app,) = cluster.embedded_serve_config()["applications"]
    args = validate_spec(AppArgs, app["args"], "serveConfigV2 args")
    assert args.gateway.enabled and args.gateway.resources == {"gateway": 1}
    assert args.gateway.num_replicas <= custom_resources(gateway)["gateway"] * gateway["maxReplicas"]
    assert not any("gateway" in m.resources for m in args.models)


def test_serve_config_is_the_generated_one():
    embedded = cluster.embedded_serve_config()
    assert embedded == cluster.serve_config(cluster.KUBERAY_SERVE_CONFIG), (
        "cluster/kuberay/rayservice.yaml is stale: run `python -m studio.cluster sync-kuberay`")
    assert embedded["http_options"]["host"] == "0.0.0.0"


def test_serve_config_validates_and_its_import_path_resolves():
    from ray.serve.schema import ServeDeploySchema

    from studio.serving.app_config import AppArgs
    from studio.recipes import validate_spec

    schema = ServeDeploySchema.model_validate(cluster.embedded_serve_config())
    (app,) = schema.applications
    module, _, attr = app.import_path.partition(":")
    builder = getattr(importlib.import_module(module), attr)
    from deployments.app import build_app

    assert builder is build_app
    args = validate_spec(AppArgs, app.args or {}, "serveConfigV2 args")
    assert all(m.resources.get("serving") for m in args.models)
    # Jobs go to the training RayCluster's head service (KubeRay names it <cluster>-head-svc).
    assert args.scheduler.ray_address == f"http://{training()['metadata']['name']}-head-svc:8265"


def test_sync_rewrites_a_stale_manifest_and_then_holds(tmp_path: Path):
    manifest = tmp_path / "rayservice.yaml"
    shutil.copy(KUBERAY / "rayservice.yaml", manifest)
    serve = tmp_path / "serve.yaml"
    data = yaml.safe_load(cluster.KUBERAY_SERVE_CONFIG.read_text())
    data["applications"][0]["args"]["ingress"]["num_replicas"] = 5
    serve.write_text(yaml.safe_dump(data))

    assert cluster.embedded_serve_config(manifest) != cluster.serve_config(serve)
    assert cluster.sync_kuberay(manifest, serve) is True
    assert cluster.embedded_serve_config(manifest) == cluster.serve_config(serve)
    assert cluster.sync_kuberay(manifest, serve) is False
    # Only the block changed: the rest of the manifest is as written.
    before = yaml.safe_load((KUBERAY / "rayservice.yaml").read_text())
    after = yaml.safe_load(manifest.read_text())
    before["spec"].pop("serveConfigV2"), after["spec"].pop("serveConfigV2")
    assert before == after
    assert cluster.main(["sync-kuberay", "--manifest", str(manifest), "--serve-config", str(serve)]) == 0


def test_generator_refuses_a_config_without_applications(tmp_path: Path, capsys):
    bad = tmp_path / "empty.yaml"
    bad.write_text("proxy_location: EveryNode\n")
    assert cluster.main(["serve-config", str(bad)]) == 2
    assert "has no applications" in capsys.readouterr().err
