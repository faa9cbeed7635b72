"""`python jobs/tune_seen.py --config configs/seen.yaml --task math --method lora-rl
--grid lr=0.003,0.01,0.03`

Chooses a method's settings for the seen table on the validation split only (seed 0); every
grid point's curve is kept in <out>/<task>/<method>/tuning.json: `t2ray results tune`, same
options."""

import sys

from t2ray.cli import main

main(["results", "tune", *sys.argv[1:]], job=True)
