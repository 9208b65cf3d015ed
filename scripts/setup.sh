# Sourced by run.sh and test.sh: create .venv and install the project into it.
# PGML_PROXY_EXTRAS names the optional dependency groups to add (e.g. "test").
# PyTorch is installed first: the CPU build (torch 2.13.0) on machines without an NVIDIA
# GPU, PyPI's CUDA build where `nvidia-smi` sees one. PGML_PROXY_TORCH overrides the choice
# (any pip requirement, e.g. "torch==2.5.1"). Where there is a GPU the "cuda" extra
# (bitsandbytes, for load_in_4bit / load_in_8bit, and the full xgboost wheel) is added,
# elsewhere the "cpu" extra (xgboost-cpu, without the NCCL libraries).
python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "pgml-proxy needs Python 3.11 or newer ($python is $("$python" -V 2>&1))" >&2
    exit 1
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
    if [ -n "${PGML_PROXY_TORCH:-}" ]; then
        "${pip[@]}" "$PGML_PROXY_TORCH"
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        "${pip[@]}" "torch>=2.4"
    else
        "${pip[@]}" "torch==2.13.0"
    fi
fi
extras=${PGML_PROXY_EXTRAS:-}
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    extras=${extras:+$extras,}cuda
else
    extras=${extras:+$extras,}cpu
fi
spec="."
[ -n "$extras" ] && spec=".[${extras}]"
stamp=".venv/.installed-$(sha1sum < pyproject.toml | cut -c1-12)-${extras:-base}"
if [ ! -e "$stamp" ]; then
    "${pip[@]}" -e "$spec"
    touch "$stamp"
fi
