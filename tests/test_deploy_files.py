"""serve_config.yaml and the cluster manifests are valid for the tools that read them."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_serve_config_is_a_valid_serve_deploy_config():
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "serve_config.yaml").read_text()))
    app = config.applications[0]
    assert app.import_path == "t2ray.serve.app:build_app"
    module, attr = app.import_path.split(":")
    builder = getattr(__import__(module, fromlist=[attr]), attr)
    assert builder(app.args) is not None


def test_serve_app_answers_in_local_testing_mode():
    from ray import serve

    from t2ray.serve.app import build_app

    handle = serve.run(build_app({"model": "tiny"}), _local_testing_mode=True)
    info = handle.describe.remote().result()
    assert info["architecture"] == "LlamaForCausalLM" and info["parameters"] > 1_000_000


def test_cluster_manifests_parse():
    kinds = {}
    for path in (ROOT / "cluster").glob("*.yaml"):
        doc = yaml.safe_load(path.read_text())
        kinds[path.name] = doc.get("kind", "ray-up")
    assert kinds == {"ray-up-gpu.yaml": "ray-up", "kuberay-rayjob.yaml": "RayJob",
                     "kuberay-rayservice.yaml": "RayService"}
