"""What every entry point in jobs/ shares: options from a YAML file, output paths that survive
`ray job submit`, and the resolved options printed and written beside the outputs.

Under `ray job submit --working-dir .` a job runs in an unpacked copy of the working directory
inside Ray's runtime-resources folder, which is deleted with the job: a relative output path
would land there and be lost. A job therefore resolves each relative output path against
`T2RAY_RUNS_DIR` (shared storage on a multi-node cluster) or refuses it before any work starts.
Relative *input* paths (configs/, a checked-in file) are read from the working directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

RUNS_DIR_ENV = "T2RAY_RUNS_DIR"
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for the entrypoint
OUTPUT_PARAMS = ("out", "results", "table_out", "doc")
RECORD_NAME = "job_config.yaml"


def in_ray_job() -> bool:
    return RAY_JOB_ENV in os.environ


def option_defaults(command, path: Path) -> dict:
    """A YAML mapping of the command's option names (dashes or underscores) to values, checked
    against the command (a click command) before anything runs: an unknown name is an error
    naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of option names to values")
    # a key is the option's flag (`use-ray` is `--ray`) or its parameter name (`use_ray`)
    known = {}
    for param in command.params:
        if param.param_type_name == "option" and param.name != "config":
            known[param.name] = param.name
            known.update({flag.lstrip("-").replace("-", "_"): param.name for flag in param.opts})
    defaults = {}
    for key, value in values.items():
        name = known.get(str(key).replace("-", "_"))
        if name is None:
            raise ValueError(f"{path}: unknown option {key!r} for `{command.name}`; known: "
                             f"{', '.join(sorted(known))}")
        defaults[name] = ",".join(map(str, value)) if isinstance(value, list) else value
    return defaults


def resolve_outputs(params: dict) -> dict:
    """Output paths made safe for a Ray job (see the module doc); unchanged outside one."""
    if not in_ray_job():
        return params
    runs = os.environ.get(RUNS_DIR_ENV)
    resolved = dict(params)
    for name in OUTPUT_PARAMS:
        value = params.get(name)
        if value is None or Path(value).is_absolute():
            continue
        if not runs:
            raise ValueError(
                f"--{name.replace('_', '-')} {value} is relative: under `ray job submit` it would "
                f"land in the job's temporary copy of the working directory and be lost; give an "
                f"absolute path on shared storage or set {RUNS_DIR_ENV}")
        resolved[name] = type(value)(Path(runs) / value)  # a Path stays a Path, a str a str
    return resolved


def record(command_path: str, params: dict) -> Path | None:
    """Print the resolved options and write them beside the outputs (`out`, or the folder of a
    results file); returns the record's path."""
    shown = {k: str(v) if isinstance(v, Path) else v for k, v in params.items()}
    print(f"t2ray {command_path}: " + json.dumps(shown, sort_keys=True), flush=True)
    target = params.get("out") or (Path(params["results"]).parent if params.get("results")
                                   else None)
    if target is None:
        return None
    folder = Path(target)
    if folder.suffix:  # a file such as --out rows.json: beside it
        folder = folder.parent
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RECORD_NAME
    path.write_text(yaml.safe_dump({"command": f"t2ray {command_path}", "options": shown},
                                   sort_keys=False))
    return path
