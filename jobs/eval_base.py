"""`ray job submit --working-dir . -- python jobs/eval_base.py --tasks math,code --split test`

Greedy accuracy of a base model per task (the same run as `t2ray base eval`)."""

import argparse
import json

from t2ray.eval.report import print_accuracy_table
from t2ray.eval.run import evaluate_base

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--model", default="tiny")
parser.add_argument("--tasks", default="math,code,reasoning,math-hard,code-hard,reasoning-hard")
parser.add_argument("--split", default="test")
parser.add_argument("--n", type=int, help="items per task (default: the whole split)")
parser.add_argument("--out", help="write the rows as JSON here")
args = parser.parse_args()

rows = evaluate_base(args.model, args.tasks.split(","), args.split, args.n)
print_accuracy_table(rows, title=f"{args.model} greedy accuracy ({args.split})")
if args.out:
    with open(args.out, "w") as f:
        json.dump([r.as_dict() for r in rows], f, indent=1)
