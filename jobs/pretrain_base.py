"""`ray job submit --working-dir . -- python jobs/pretrain_base.py --out DIR [--config YAML]`

Pretrains the tiny base model (the same recipe as `t2ray base pretrain`)."""

import argparse

from t2ray.models.pretrain import PretrainConfig, pretrain

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--out", required=True)
parser.add_argument("--config", help="YAML with PretrainConfig fields")
parser.add_argument("--steps", type=int)
parser.add_argument("--install", action="store_true", help="install as the bundled `tiny` model")
args = parser.parse_args()

cfg = PretrainConfig.from_yaml(args.config) if args.config else PretrainConfig()
cfg.out = args.out
if args.steps is not None:
    cfg.steps = args.steps
pretrain(cfg, install=args.install)
