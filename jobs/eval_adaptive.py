"""`ray job submit --working-dir . -- python jobs/eval_adaptive.py --experts DIR --out /shared/eval`

Accuracy per adaptation strategy (none, expert, prompt, classifier, few-shot, ...) on each task;
few-shot runs write the stored profiles the server mixes with (`<out>/profiles/`): `t2ray eval`,
same options (and `--config YAML` with them)."""

import sys

from t2ray.cli import main

main(["eval", *sys.argv[1:]], job=True)
