"""`ray job submit --working-dir . -- python jobs/pretrain_base.py --out DIR [--config YAML]`

Pretrains the tiny base model: `t2ray base pretrain`, same options."""

import sys

from t2ray.cli import main

main(["base", "pretrain", *sys.argv[1:]], job=True)
