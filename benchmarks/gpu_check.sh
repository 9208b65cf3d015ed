#!/usr/bin/env bash
# Tune and serve the text-classification benchmark project on CUDA and record the figures.
#
#   benchmarks/gpu_check.sh [OUT_DIR]
#
# Runs benchmarks/tune_serve.py with --device cuda (quality, training speed, serving batch,
# single-row latency, concurrency, memory) and writes its output to OUT_DIR (default
# benchmarks/out/gpu). Uses .venv/bin/python when there is one, else python3.
#
# Offline machines: when a bundle folder (PGML_GPU_BUNDLE, default .gpu/) holds
#   site.tar.xz   Python packages the machine lacks, unpacked onto PYTHONPATH,
#   minilm/       sentence-transformers/all-MiniLM-L6-v2 (any dtype; written out as float32),
#   data/rt_polarity.jsonl
# the check uses them instead of installed packages and ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/out/gpu}
mkdir -p "$out"
bundle=${PGML_GPU_BUNDLE:-.gpu}
python=python3
[ -x .venv/bin/python ] && python=.venv/bin/python
args=(--device cuda)
if [ -f "$bundle/site.tar.xz" ]; then
    mkdir -p /tmp/pgml-gpu-site
    tar -C /tmp/pgml-gpu-site -xJf "$bundle/site.tar.xz"
    export PYTHONPATH="$PWD:/tmp/pgml-gpu-site${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -d "$bundle/minilm" ]; then
    models=/tmp/pgml-gpu-models
    "$python" - "$bundle/minilm" "$models/sentence-transformers/all-MiniLM-L6-v2" <<'PY'
import shutil, sys
from pathlib import Path
import torch
from transformers import AutoModel
source, target = Path(sys.argv[1]), Path(sys.argv[2])
target.mkdir(parents=True, exist_ok=True)
AutoModel.from_pretrained(source, dtype=torch.float32).save_pretrained(target)
for path in source.iterdir():
    if path.is_file() and not (target / path.name).exists():
        shutil.copy(path, target / path.name)
PY
    args+=(--models-dir "$models")
fi
[ -f "$bundle/data/rt_polarity.jsonl" ] && args+=(--data "$bundle/data/rt_polarity.jsonl")
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$python" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)'
} 2>&1 | tee "$out/machine.txt"
"$python" benchmarks/tune_serve.py "${args[@]}" ${PGML_GPU_CHECK_ARGS:-} 2>&1 | tee "$out/tune_serve.txt"
