"""serve_config.yaml and the cluster manifests are valid for the tools that read them."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


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


def test_cluster_manifests_parse():
    kinds = {}
    for path in (ROOT / "cluster").glob("*.yaml"):
        doc = yaml.safe_load(path.read_text())
        kinds[path.name] = doc.get("kind", "ray-up")
    assert kinds == {"ray-up-gpu.yaml": "ray-up", "kuberay-rayjob.yaml": "RayJob",
                     "kuberay-rayservice.yaml": "RayService"}
