"""`python jobs/t2l_results.py --config configs/t2l.yaml --seeds 0,1,2 --out runs/t2l-table`

The T2L table: base, base + description, multi-task LoRA, per-task LoRA (oracle), T2L
reconstruction and SFT (L, M, S), text-to-SVF and the random-description control, on the
held-out instruction families' test splits; merged into docs/results.json (table `t2l`). Every
trained artifact and score is kept under --out, so a rerun resumes where it stopped."""

import argparse
from pathlib import Path

from t2ray.eval.t2l import T2LTableConfig, all_methods, t2l_table

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--config", help="YAML with T2LTableConfig fields")
parser.add_argument("--methods", default=",".join(all_methods()))
parser.add_argument("--seeds", default="0,1,2")
parser.add_argument("--n-test", type=int, help="test items per family (default: all)")
parser.add_argument("--out", default="runs/t2l-table")
parser.add_argument("--results", default="docs/results.json")
args = parser.parse_args()

cfg = T2LTableConfig.from_yaml(args.config) if args.config else T2LTableConfig()
if args.n_test is not None:
    cfg.n_test = args.n_test
t2l_table(cfg, Path(args.out), args.methods.split(","), [int(s) for s in args.seeds.split(",")],
          results_json=Path(args.results))
