"""`python jobs/seen_results.py --config configs/seen.yaml --seeds 0,1,2 --out runs/seen`

The seen-task table (base / LoRA-RL / LoRA-SFT / SVF-RL / SVF-SFT per task and seed, scored on
the test split, merged into docs/results.json): `t2ray results seen`, same options."""

import sys

from t2ray.cli import main

main(["results", "seen", *sys.argv[1:]], job=True)
