"""`python jobs/unseen_results.py --config configs/seen.yaml --seen runs/seen --seeds 0,1,2`

The unseen-family table (the paper's Table 2): base / LoRA-RL / prompt / classifier / few-shot.
Per seed it trains the classifier expert (task `route`, seen families' train splits only) with
the seen sweep's SVF-RL settings, assembles an expert library from the seen sweep's runs of the
same seed (`<out>/library/seed<k>/`: math, code, reasoning, route, lora/<family>), then scores
every strategy on the unseen families' test splits into docs/results.json (table `unseen`)."""

import argparse
import shutil
from dataclasses import replace
from pathlib import Path

import ray
import yaml

from t2ray.adapt.fewshot import FewShotConfig
from t2ray.eval.adaptive import CLASSIFIER, EXPERT_CATEGORIES, run_eval
from t2ray.rl.launch import train
from t2ray.rl.trainer import TrainConfig
from t2ray.svf.expert import ExpertLibrary, ExpertVector
from t2ray.svf.ops import decompose_model
from t2ray.tasks import CORE_UNSEEN

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--config", required=True, help="the seen sweep's YAML (configs/seen.yaml)")
parser.add_argument("--seen", default="runs/seen", help="the seen sweep's output directory")
parser.add_argument("--model", default="tiny")
parser.add_argument("--seeds", default="0,1,2")
parser.add_argument("--strategies", default="none,lora,prompt,classifier,fewshot")
parser.add_argument("--n-test", type=int, help="test items per family (default: all)")
parser.add_argument("--population", type=int, default=32)
parser.add_argument("--generations", type=int, default=10)
parser.add_argument("--concurrency", type=int, default=2)
parser.add_argument("--per-matrix", action="store_true", help="one alpha per expert x matrix")
parser.add_argument("--searcher", default="cem", help="cem, optuna-cmaes or nevergrad")
parser.add_argument("--out", default="runs/unseen", help="route experts and libraries")
parser.add_argument("--tables", help="where scores, tables and plots go (default: --out)")
parser.add_argument("--results", default="docs/results.json")
args = parser.parse_args()

fields = yaml.safe_load(Path(args.config).read_text())
overrides = (fields.pop("methods", {}) or {}).get("svf-rl", {})
# the classifier's own settings (chosen on the route task's validation split), if any
overrides.update(((fields.pop("tasks", {}) or {}).get(CLASSIFIER) or {}).get("svf-rl", {}))
cache = decompose_model(args.model, "mlp")
base_cfg = TrainConfig(**{**fields, **overrides}, model=args.model, svd_cache=str(cache.root))
seen, out = Path(args.seen), Path(args.out)
seeds = [int(s) for s in args.seeds.split(",")]
for seed in seeds:
    lib = ExpertLibrary(out / "library" / f"seed{seed}")
    route_run = out / "route" / f"seed{seed}"
    if not (route_run / "expert").exists():
        train(replace(base_cfg, out=str(route_run), task=CLASSIFIER, seed=seed), workers=0)
    sources = {c: seen / c / "svf-rl" / f"seed{seed}" / "expert" for c in EXPERT_CATEGORIES}
    sources[CLASSIFIER] = route_run / "expert"
    for name, src in sources.items():
        if name not in lib.names():
            lib.add(name, ExpertVector.load(src, expect_fingerprint=cache.fingerprint))
    for family in EXPERT_CATEGORIES if "lora" in args.strategies.split(",") else ():
        dst = lib.root / "lora" / family
        if not dst.exists():
            shutil.copytree(seen / family / "lora-rl" / f"seed{seed}" / "lora", dst)

fewshot = FewShotConfig(population=args.population, generations=args.generations,
                        concurrency=args.concurrency, per_matrix=args.per_matrix,
                        searcher=args.searcher)
if "fewshot" in args.strategies.split(","):
    ray.init(num_cpus=max(2, args.concurrency), include_dashboard=False, log_to_driver=False)
run_eval(args.model, out / "library", list(CORE_UNSEEN), args.strategies.split(","), seeds,
         Path(args.tables or out), str(cache.root), args.n_test, fewshot,
         results_json=Path(args.results))
