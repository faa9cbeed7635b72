"""`ray job submit --working-dir . -- python jobs/train_svf.py --task math --workers 2 --out DIR`

Trains an SVF expert (or, with --policy lora, the LoRA baseline): the same function as
`t2ray svf train` / `t2ray lora train`."""

import argparse

from t2ray.rl.launch import train
from t2ray.rl.trainer import TrainConfig

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--out", required=True)
parser.add_argument("--config", help="YAML with TrainConfig fields")
parser.add_argument("--model", default="tiny")
parser.add_argument("--task", default="math")
parser.add_argument("--policy", default="svf", choices=["svf", "lora"])
parser.add_argument("--objective", default="rl", choices=["rl", "sft"])
parser.add_argument("--workers", type=int, default=2)
parser.add_argument("--deepspeed-stage", type=int)
parser.add_argument("--steps", type=int)
parser.add_argument("--max-failures", type=int, default=1)
args = parser.parse_args()

cfg = TrainConfig.from_yaml(args.config) if args.config else TrainConfig()
cfg.out, cfg.model, cfg.task, cfg.policy, cfg.objective = (args.out, args.model, args.task,
                                                          args.policy, args.objective)
cfg.deepspeed_stage = args.deepspeed_stage
if args.steps is not None:
    cfg.steps = args.steps
train(cfg, workers=args.workers, max_failures=args.max_failures)
