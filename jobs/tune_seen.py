"""`python jobs/tune_seen.py --config configs/seen.yaml --task math --method lora-rl
--grid lr=0.003,0.01,0.03`

Choose a method's hyper-parameters for the seen table on the validation split only (seed 0):
every grid point is trained, the final validation accuracy decides, runs/tune/<task>/<method>/
tuning.json keeps every point's curve. The test split is not read."""

import argparse
from pathlib import Path

import yaml

from t2ray.eval.seen import tune_on_validation
from t2ray.rl.trainer import TrainConfig
from t2ray.svf.ops import decompose_model

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--config", required=True, help="the sweep's YAML (configs/seen.yaml)")
parser.add_argument("--task", required=True)
parser.add_argument("--method", required=True)
parser.add_argument("--grid", action="append", required=True,
                    help="FIELD=v1,v2,... (repeat for a product grid)")
parser.add_argument("--eval-n", type=int, default=200, help="validation items per reading")
parser.add_argument("--out", default="runs/tune")
args = parser.parse_args()

fields = yaml.safe_load(Path(args.config).read_text())
overrides = (fields.pop("methods", {}) or {}).get(args.method, {})
fields.pop("tasks", None)  # per-task choices are what this job makes
cfg = TrainConfig(**{**fields, **overrides, "eval_n": args.eval_n})
cfg.svd_cache = str(decompose_model(cfg.model, "mlp").root)
grid = {}
for spec in args.grid:
    key, _, values = spec.partition("=")
    kind = type(getattr(cfg, key))
    grid[key] = [kind(v) for v in values.split(",")]
tune_on_validation(cfg, args.task, args.method, grid, Path(args.out))
