"""`ray job submit --working-dir . -- python jobs/train_t2l.py --out DIR --variant M
--objective sft --workers 2`

Trains the T2L hypernetwork: the same function as `t2ray t2l train`, same options."""

import argparse

from t2ray.t2l.train import T2LTrainConfig, train_t2l

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--out", required=True)
parser.add_argument("--config", help="YAML with T2LTrainConfig fields")
parser.add_argument("--model")
parser.add_argument("--variant", choices=["L", "M", "S", "Z"])
parser.add_argument("--objective", choices=["sft", "recon"])
parser.add_argument("--library", help="recon: directory of per-task LoRAs")
parser.add_argument("--steps", type=int)
parser.add_argument("--seed", type=int)
parser.add_argument("--deepspeed-stage", type=int)
parser.add_argument("--workers", type=int, default=2)
parser.add_argument("--max-failures", type=int, default=1)
args = parser.parse_args()

cfg = T2LTrainConfig.from_yaml(args.config) if args.config else T2LTrainConfig()
for name in ("out", "model", "variant", "objective", "library", "steps", "seed",
             "deepspeed_stage"):
    if getattr(args, name) is not None:
        setattr(cfg, name, getattr(args, name))
train_t2l(cfg, workers=args.workers, max_failures=args.max_failures)
