"""`ray job submit --working-dir . -- python jobs/eval_base.py --tasks math,code --split test`

Greedy accuracy of a base model per task: `t2ray base eval`, same options."""

import sys

from t2ray.cli import main

main(["base", "eval", *sys.argv[1:]], job=True)
