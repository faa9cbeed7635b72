"""`ray job submit --working-dir . -- python jobs/decompose.py --model MODEL --out /shared/svd`

The SVD of every target matrix into a resumable, fingerprinted cache: `t2ray svf decompose`,
same options (and `--config YAML` with them)."""

import sys

from t2ray.cli import main

main(["svf", "decompose", *sys.argv[1:]], job=True)
