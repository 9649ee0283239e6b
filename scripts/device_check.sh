#!/usr/bin/env bash
# Entry point of the device check on a lent GPU machine (see scripts/device_check.py --help).
# Run from anywhere as: bash scripts/device_check.sh [device_check.py options]
# CPU-only check here: PYTHON=.venv/bin/python bash scripts/device_check.sh --cpu
# The machine has torch/transformers/peft/accelerate but not trl, datasets, dill or multiprocess:
# their wheels are carried in .whl/ (git-ignored) and installed into /tmp/site, first on PYTHONPATH.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
    echo "installing $(ls .whl/*.whl | wc -l) wheels from .whl into /tmp/site:" .whl/*.whl
    if ! "${PYTHON:-python3}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl; then
        # All the carried wheels are pure Python: unpacking them is a complete install.
        echo "pip install failed; unpacking the wheels instead"
        "${PYTHON:-python3}" - .whl/*.whl <<'PY'
import sys, zipfile
for wheel in sys.argv[1:]:
    zipfile.ZipFile(wheel).extractall("/tmp/site")
PY
    fi
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
else
    echo "no .whl folder: using the packages installed on this machine"
fi

nvidia-smi || echo "nvidia-smi failed (exit $?)"
"${PYTHON:-python3}" -c 'import trl, datasets; print("trl", trl.__version__, trl.__file__); print("datasets", datasets.__version__)' \
    || echo "WARNING: trl/datasets do not import: em_lora and kill_resume will fail"

"${PYTHON:-python3}" scripts/device_check.py "$@"
