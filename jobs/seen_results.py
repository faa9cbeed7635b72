"""`python jobs/seen_results.py --tasks math,code,reasoning --seeds 0,1,2 --out runs/seen`

The seen-task table: base / LoRA-RL / LoRA-SFT / SVF-RL / SVF-SFT, trained per task and seed,
scored on the test split, merged into docs/results.json (table `seen`)."""

import argparse
from pathlib import Path

import yaml

from t2ray.eval.seen import METHODS, seen_table
from t2ray.rl.trainer import TrainConfig
from t2ray.svf.ops import decompose_model

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--config", help="YAML: TrainConfig fields shared by all runs, and under "
                    "`methods:` per-method overrides (e.g. methods: {lora-rl: {lr: 0.001}}) and "
                    "under `tasks:` per-task ones (tasks: {reasoning: {svf-rl: {lr: 0.005}}})")
parser.add_argument("--model", default="tiny")
parser.add_argument("--tasks", default="math,code,reasoning")
parser.add_argument("--seeds", default="0,1,2")
parser.add_argument("--methods", default=",".join(METHODS))
parser.add_argument("--steps", type=int)
parser.add_argument("--workers", type=int, default=0)
parser.add_argument("--n-test", type=int, help="test items per task (default: all)")
parser.add_argument("--out", default="runs/seen")
parser.add_argument("--results", default="docs/results.json")
args = parser.parse_args()

fields = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
overrides = fields.pop("methods", {}) or {}
task_overrides = fields.pop("tasks", {}) or {}
cfg = TrainConfig(**fields)
cfg.model = args.model
if args.steps is not None:
    cfg.steps = args.steps
cfg.svd_cache = str(decompose_model(cfg.model, "mlp").root)
seen_table(cfg, args.tasks.split(","), [int(s) for s in args.seeds.split(",")],
           args.methods.split(","), Path(args.out), workers=args.workers, n_test=args.n_test,
           results_json=Path(args.results), method_overrides=overrides,
           task_overrides=task_overrides)
