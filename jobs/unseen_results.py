"""`python jobs/unseen_results.py --config configs/seen.yaml --seen runs/seen --seeds 0,1,2`

The unseen-family table (base / LoRA-RL / prompt / classifier / few-shot): trains the classifier
expert per seed, assembles per-seed libraries from the seen sweep, scores every strategy on the
unseen families' test splits into docs/results.json: `t2ray results unseen`, same options."""

import sys

from t2ray.cli import main

main(["results", "unseen", *sys.argv[1:]], job=True)
