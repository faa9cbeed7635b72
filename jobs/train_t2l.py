"""`ray job submit --working-dir . -- python jobs/train_t2l.py --out DIR --variant M
--objective sft --workers 2`

Trains the T2L hypernetwork: exactly `t2ray t2l train` (same options)."""

import sys

from t2ray.cli import app

app(["t2l", "train", *sys.argv[1:]])
