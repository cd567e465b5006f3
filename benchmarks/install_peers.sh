#!/usr/bin/env bash
# Installs the PyTorch peer of the benchmarks (benchmarks/PEERS.md) into the active
# virtualenv: the `peers` extra (the CPU torch, torchvision, gym, Cython), then
# learn2learn 0.2.0 built from its sdist with its C files regenerated, without its own
# requirements. Run from anywhere, with metalearn's virtualenv active:
#     bash benchmarks/install_peers.sh
# Where pip has no CPU torch 2.13.0 of its own (this project's machines do), point it
# at PyTorch's CPU index, or it takes the multi-GB CUDA build from PyPI:
#     PIP_INDEX_URL=https://download.pytorch.org/whl/cpu \
#     PIP_EXTRA_INDEX_URL=https://pypi.org/simple bash benchmarks/install_peers.sh
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "${VIRTUAL_ENV:-}" ]; then
    echo "install_peers.sh: activate metalearn's virtualenv first (source .venv/bin/activate)" >&2
    exit 2
fi
python="$VIRTUAL_ENV/bin/python"
"$python" -m pip install --quiet -e "$repo[peers]"
build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
# only learn2learn from source, built with this virtualenv's setuptools and Cython
# (an isolated build would fetch and compile its own)
"$python" -m pip download --quiet --no-deps --no-build-isolation \
    --no-binary learn2learn learn2learn==0.2.0 -d "$build"
tar xzf "$build/learn2learn-0.2.0.tar.gz" -C "$build"
cd "$build/learn2learn-0.2.0"
# the shipped C files come from a Cython too old for Python 3.11 (longintrepr.h)
"$python" -m cython -3 learn2learn/data/meta_dataset.pyx \
    learn2learn/data/task_dataset.pyx learn2learn/data/transforms.pyx
"$python" -m pip install --quiet --no-deps --no-build-isolation .
cd "$repo"
"$python" - <<'PY'
import sys

sys.path.insert(0, "benchmarks")
import peer_l2l  # noqa: E402

cuda = peer_l2l.torch.version.cuda
build = f"a CUDA {cuda} build" if cuda else "the CPU build"
print(f"learn2learn {peer_l2l.l2l.__version__} imports, torch is {build}")
PY
