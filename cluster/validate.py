"""Validate cluster/ offline: `python cluster/validate.py [FILE ...]` (every manifest by default).

- `ray up` configs against the schema that ships in the Ray wheel (ray/autoscaler/ray-schema.json);
- KubeRay RayCluster / RayJob / RayService manifests: their `spec` against the
  `openAPIV3Schema` of the CRD of the KubeRay version they target (cluster/schemas/kuberay-v1.7.0,
  the published CRDs, gzipped). Like `kubectl apply --validate=strict`, a field the schema does
  not declare is an error (the API server would drop it silently);
- other Kubernetes objects (NetworkPolicy, PersistentVolumeClaim): apiVersion, kind and name.

Each error names the file, the path in the document and the schema rule that failed.
"""

from __future__ import annotations

import copy
import gzip
import json
import sys
from functools import lru_cache
from pathlib import Path

import jsonschema
import yaml

HERE = Path(__file__).resolve().parent
KUBERAY_VERSION = "v1.7.0"
CRDS = HERE / "schemas" / f"kuberay-{KUBERAY_VERSION}"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml.gz", "RayJob": "ray.io_rayjobs.yaml.gz",
             "RayService": "ray.io_rayservices.yaml.gz"}
CORE_KINDS = {"NetworkPolicy": "networking.k8s.io/v1", "PersistentVolumeClaim": "v1"}


def _strict(schema):
    """The schema with undeclared fields forbidden wherever an object lists its properties and
    neither allows extra ones nor preserves unknown fields."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@lru_cache(maxsize=None)
def crd_spec_schema(kind: str, version: str = "v1") -> dict:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 1 MB CRDs in a second
    crd = yaml.load(gzip.open(CRDS / CRD_FILES[kind], "rt"), Loader=loader)
    (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return _strict(copy.deepcopy(entry["schema"]["openAPIV3Schema"]["properties"]["spec"]))


@lru_cache(maxsize=None)
def ray_up_schema() -> dict:
    import ray

    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def _errors(validator, document, file: str, prefix: str) -> list[str]:
    found = []
    for error in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in (prefix, *error.absolute_path) if p != "")
        rule = "/".join(str(p) for p in error.absolute_schema_path)
        found.append(f"{file}: {where or '<root>'}: {error.message} (schema rule: {rule})")
    return found


def validate_document(document: dict, file: str) -> list[str]:
    """Errors of one YAML document, each naming the file, the path and the rule."""
    if not isinstance(document, dict):
        return [f"{file}: <root>: expected a mapping"]
    kind = document.get("kind")
    if kind is None:  # a `ray up` cluster config
        schema = ray_up_schema()
        return _errors(jsonschema.validators.validator_for(schema)(schema), document, file, "")
    if kind in CRD_FILES:
        api = document.get("apiVersion", "")
        if not api.startswith("ray.io/"):
            return [f"{file}: apiVersion: {api!r} is not a ray.io version"]
        schema = crd_spec_schema(kind, api.split("/", 1)[1])
        errors = _errors(jsonschema.Draft7Validator(schema), document.get("spec", {}), file,
                         "spec")
        if kind == "RayService":  # the embedded Serve config is a string the CRD cannot check
            errors += _serve_config_errors(document["spec"].get("serveConfigV2", ""), file)
        return errors + _loopback_dashboard_errors(document, file)
    if kind in CORE_KINDS:
        errors = []
        if document.get("apiVersion") != CORE_KINDS[kind]:
            errors.append(f"{file}: apiVersion: expected {CORE_KINDS[kind]!r} for {kind}")
        if not (document.get("metadata") or {}).get("name"):
            errors.append(f"{file}: metadata.name: required")
        return errors
    return [f"{file}: kind: no schema here for {kind!r}"]


def cluster_spec(document: dict) -> tuple[list[str], dict]:
    """The RayCluster spec of a RayCluster, RayJob (`rayClusterSpec`) or RayService
    (`rayClusterConfig`) manifest, and its path in the document."""
    spec = document.get("spec") or {}
    for key in ("rayClusterSpec", "rayClusterConfig"):
        if key in spec:
            return ["spec", key], spec[key]
    return ["spec"], spec


def _loopback_dashboard_errors(document: dict, file: str) -> list[str]:
    """KubeRay's operator and the RayJob submitter reach the dashboard through the head
    Service, so a head that listens on loopback only cannot work (KubeRay sets 0.0.0.0)."""
    path, cluster = cluster_spec(document)
    params = ((cluster.get("headGroupSpec") or {}).get("rayStartParams") or {})
    host = params.get("dashboard-host")
    if host in ("127.0.0.1", "localhost", "::1"):
        where = ".".join([*path, "headGroupSpec", "rayStartParams", "dashboard-host"])
        return [f"{file}: {where}: {host!r} is unreachable from outside the head pod; the "
                f"operator and the RayJob submitter need KubeRay's default 0.0.0.0 (keep the "
                f"dashboard private with a ClusterIP Service, a NetworkPolicy and token auth)"]
    return []


def _serve_config_errors(text: str, file: str) -> list[str]:
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    try:
        ServeDeploySchema.model_validate(yaml.safe_load(text))
    except (ValidationError, yaml.YAMLError) as e:
        return [f"{file}: spec.serveConfigV2: {e}"]
    return []


def validate_file(path: Path) -> list[str]:
    path = Path(path)
    errors = []
    for document in yaml.safe_load_all(path.read_text()):
        errors += validate_document(document, path.name)
    return errors


def manifests() -> list[Path]:
    return sorted(HERE.glob("*.yaml"))


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or manifests()
    errors = [e for path in paths for e in validate_file(path)]
    for error in errors:
        print(error)
    print(f"{len(paths)} files, {len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
