"""`ray job submit --working-dir . -- python jobs/train_t2l.py --out DIR --variant M
--objective sft --workers 2`

Trains the T2L hypernetwork: `t2ray t2l train`, same options (on 2 Ray Train workers unless
--workers says otherwise)."""

import sys

from t2ray.cli import main

main(["t2l", "train", "--workers", "2", *sys.argv[1:]], job=True)
