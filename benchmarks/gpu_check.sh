#!/usr/bin/env bash
# The GPU benchmarks, on CUDA, with their output in OUT_DIR (default benchmarks/out/gpu).
#
#   benchmarks/gpu_check.sh [OUT_DIR]
#
# PGML_GPU_CHECKS picks the sections (default "tune_serve tune_lora passthrough"):
#   tune_serve  benchmarks/tune_serve.py: tune and serve the text-classification project
#               (quality, training speed, serving batch, latency, concurrency, memory);
#   tune_lora   benchmarks/tune_lora.py: full tuning against LoRA and QLoRA (load_in_4bit)
#               of a random Llama-style model of 1.1B parameters built from a config (peak
#               GPU memory, samples/s), one training process against one per GPU where
#               there are several, and LoRA against full tuning of all-MiniLM-L6-v2.
#               Needs peft and bitsandbytes (QLoRA is skipped without bitsandbytes).
#   passthrough benchmarks/passthrough.py on the machine's cores: pgbench -S through the
#               proxy with --workers 1, 4 and 8 against PgBouncer (against PostgreSQL
#               only where PgBouncer is not installed), 8, 32 and 64 clients.
# Extra arguments: PGML_GPU_CHECK_ARGS (tune_serve), PGML_GPU_LORA_ARGS (tune_lora),
# PGML_PASSTHROUGH_ARGS (passthrough).
# Uses .venv/bin/python when there is one, else python3.
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
checks=${PGML_GPU_CHECKS:-tune_serve tune_lora passthrough}
if [[ " $checks " == *" passthrough "* ]]; then
    nproc | sed 's/^/cores: /' | tee -a "$out/machine.txt"
    bouncer=()
    command -v pgbouncer >/dev/null || bouncer=(--no-pgbouncer)
    "$python" benchmarks/passthrough.py --workers 1,4,8 --clients 8,32,64 --seconds 5 \
        --rounds 3 "${bouncer[@]}" ${PGML_PASSTHROUGH_ARGS:-} 2>&1 | tee "$out/passthrough.txt"
fi
if [[ " $checks " == *" tune_serve "* ]]; then
    "$python" benchmarks/tune_serve.py "${args[@]}" ${PGML_GPU_CHECK_ARGS:-} 2>&1 | tee "$out/tune_serve.txt"
fi
if [[ " $checks " == *" tune_lora "* ]]; then
    "$python" -c 'import peft, bitsandbytes; print("peft", peft.__version__, "bitsandbytes", bitsandbytes.__version__)' 2>&1 | tee -a "$out/machine.txt" || true
    "$python" benchmarks/tune_lora.py gpu-llama gpu-processes lora-vs-full "${args[@]}" ${PGML_GPU_LORA_ARGS:-} 2>&1 | tee "$out/tune_lora.txt"
fi
