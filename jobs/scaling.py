"""`ray job submit --working-dir . -- python jobs/scaling.py --workers 1,2,4,8 --out /shared/scaling`

Short SVF-RL and T2L-SFT training runs at each worker count and ZeRO stage, their per-step
metrics on the dashboard (Prometheus, cluster/grafana-t2ray-training.json), then a table and a
plot of throughput and efficiency against workers: `t2ray scaling`, same options (and `--config
YAML` with ScalingConfig fields)."""

import sys

from t2ray.cli import main

main(["scaling", *sys.argv[1:]], job=True)
