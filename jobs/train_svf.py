"""`ray job submit --working-dir . -- python jobs/train_svf.py --task math --workers 2 --out DIR`

Trains an SVF expert (or, with --policy lora, the LoRA baseline): `t2ray svf train`, same
options."""

import sys

from t2ray.cli import main

main(["svf", "train", *sys.argv[1:]], job=True)
