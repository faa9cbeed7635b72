"""`python jobs/t2l_results.py --config configs/t2l.yaml --seeds 0,1,2 --out runs/t2l-table`

The T2L table on the held-out instruction families, resumable: `t2ray results t2l`, same
options."""

import sys

from t2ray.cli import main

main(["results", "t2l", *sys.argv[1:]], job=True)
