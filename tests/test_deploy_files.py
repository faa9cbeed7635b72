"""serve_config.yaml, cluster/ and configs/examples are valid for the tools that read them:
Ray Serve's schema, Ray's `ray up` schema, KubeRay v1.7.0's CRDs, and our own config classes."""

import importlib.util
import shlex
from pathlib import Path

import pytest
import typer
import yaml

from t2ray.cli import app
from t2ray.job import option_defaults

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"
EXAMPLES = ROOT / "configs" / "examples"
IMAGE = "ghcr.io/your-org/t2ray:"  # what cluster/Dockerfile builds (placeholder registry)

spec = importlib.util.spec_from_file_location("cluster_validate", CLUSTER / "validate.py")
validate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(validate)


def load(name: str):
    return yaml.safe_load((CLUSTER / name).read_text())


def _deployments(app) -> set[str]:
    """Names of every deployment bound into a built application."""
    from ray.serve.deployment import Application

    found, todo = set(), [app]
    while todo:
        d = todo.pop()._bound_deployment
        found.add(d.name)
        todo += [a for a in (*d.init_args, *d.init_kwargs.values()) if isinstance(a, Application)]
    return found


def test_serve_config_is_valid_and_names_the_deployments_the_app_builds():
    from ray.serve.schema import ServeDeploySchema

    from t2ray.serve.app import DEPLOYMENTS

    config = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "serve_config.yaml").read_text()))
    app = config.applications[0]
    assert app.import_path == "t2ray.serve.app:build_app"
    module, attr = app.import_path.split(":")
    builder = getattr(__import__(module, fromlist=[attr]), attr)
    built = _deployments(builder(app.args))
    assert built == set(DEPLOYMENTS)
    assert {d.name for d in app.deployments} == built


def test_every_cluster_file_validates():
    kinds = {p.name: [d.get("kind", "ray-up") for d in yaml.safe_load_all(p.read_text())]
             for p in validate.manifests()}
    assert kinds == {"ray-up-gpu.yaml": ["ray-up"], "kuberay-raycluster.yaml": ["RayCluster"],
                     "kuberay-rayjob.yaml": ["RayJob"], "kuberay-rayservice.yaml": ["RayService"],
                     "kuberay-networkpolicy.yaml": ["NetworkPolicy"],
                     "kuberay-storage.yaml": ["PersistentVolumeClaim"]}
    for path in validate.manifests():
        assert validate.validate_file(path) == [], path.name
        if path.name.startswith("kuberay-ray"):
            assert f"KubeRay {validate.KUBERAY_VERSION}" in path.read_text(), path.name


@pytest.mark.parametrize("name, edit, expected", [
    ("kuberay-raycluster.yaml", lambda d: d["spec"]["headGroupSpec"].update(serviceTyp="x"),
     "spec.headGroupSpec: Additional properties are not allowed ('serviceTyp'"),
    ("kuberay-rayjob.yaml", lambda d: d["spec"].update(ttlSecondsAfterFinished="soon"),
     "spec.ttlSecondsAfterFinished: 'soon' is not of type 'integer' (schema rule: "
     "properties/ttlSecondsAfterFinished/type)"),
    ("kuberay-rayservice.yaml",
     lambda d: d["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"].update(
         {"dashboard-host": "127.0.0.1"}),
     "dashboard-host"),
    ("ray-up-gpu.yaml", lambda d: d.update(max_workers="four"),
     "max_workers: 'four' is not of type 'integer' (schema rule: properties/max_workers/type)"),
    ("ray-up-gpu.yaml", lambda d: d.update(file_mount={}), "'file_mount' was unexpected"),
])
def test_a_broken_manifest_names_file_path_and_rule(name, edit, expected):
    document = load(name)
    edit(document)
    errors = validate.validate_document(document, name)
    assert any(e.startswith(f"{name}: ") and expected in e for e in errors), errors


def test_the_rayservice_serves_serve_config_yaml():
    served = yaml.safe_load(load("kuberay-rayservice.yaml")["spec"]["serveConfigV2"])
    local = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    (mine,), (theirs,) = served["applications"], local["applications"]
    drop = lambda a: {k: v for k, v in a.items() if k != "runtime_env"}  # noqa: E731
    assert drop(mine) == drop(theirs)


def _containers(document) -> list[dict]:
    _, cluster = validate.cluster_spec(document)
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_every_node_runs_the_project_image_and_the_dashboard_is_reachable_in_the_pod():
    for name in ("kuberay-raycluster.yaml", "kuberay-rayjob.yaml", "kuberay-rayservice.yaml"):
        document = load(name)
        assert all(c["image"].startswith(IMAGE) for c in _containers(document)), name
        _, cluster = validate.cluster_spec(document)
        assert cluster["authOptions"] == {"mode": "token"}, name
        assert cluster["headGroupSpec"]["serviceType"] == "ClusterIP", name
        assert "dashboard-host" not in cluster["headGroupSpec"]["rayStartParams"], name
    up = load("ray-up-gpu.yaml")
    assert up["docker"]["image"].startswith(IMAGE) and up["docker"]["head_image"].startswith(IMAGE)
    assert up["file_mounts"]["~/t2ray"] == "."  # the checkout reaches every node
    assert any("cd ~/t2ray" in c and "pip install" in c for c in up["setup_commands"])
    assert all("RAY_AUTH_MODE=token" in c for c in up["head_start_ray_commands"][1:]
               + up["worker_start_ray_commands"][1:])


def test_dockerfile_copies_what_exists():
    lines = (CLUSTER / "Dockerfile").read_text().splitlines()
    copied = [shlex.split(line)[-2] if len(shlex.split(line)) > 3 else shlex.split(line)[1]
              for line in lines if line.startswith("COPY")]
    for source in copied:
        for part in source.split():
            assert (ROOT / part).exists(), part


def test_the_rayjob_trains_svf_from_an_example_config():
    from t2ray.rl.trainer import TrainConfig

    entry = load("kuberay-rayjob.yaml")["spec"]["entrypoint"]
    assert "python jobs/train_svf.py --config" in entry
    for word in shlex.split(entry.replace("&&", " ")):
        if word.startswith("jobs/") or word.startswith("configs/"):
            assert (ROOT / word).exists(), word
    config = shlex.split(entry)[shlex.split(entry).index("--config") + 1]
    TrainConfig.from_yaml(ROOT / config).validate()


def _command(*words):
    command = typer.main.get_command(app)
    for w in words:
        command = command.commands[w]
    return command


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_config_loads_and_validates(path):
    from t2ray.rl.trainer import TrainConfig
    from t2ray.t2l.train import T2LTrainConfig

    if path.name.startswith("train_svf_"):
        TrainConfig.from_yaml(path).validate()
    elif path.name.startswith("train_t2l_"):
        T2LTrainConfig.from_yaml(path).validate()
    else:
        commands = {"decompose_": ("svf", "decompose"), "eval_base_": ("base", "eval"),
                    "eval_adaptive_": ("eval",)}
        (words,) = [w for prefix, w in commands.items() if path.name.startswith(prefix)]
        assert option_defaults(_command(*words), path)
