#!/usr/bin/env bash
# Installs the PyTorch peer of the benchmarks (benchmarks/PEERS.md) into the active
# virtualenv: the `peers` extra (the CPU torch, torchvision, gym, Cython), then
# learn2learn 0.2.0 built from its sdist with its C files regenerated, without its own
# requirements. Run from anywhere, with metalearn's virtualenv active:
#     bash benchmarks/install_peers.sh
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "${VIRTUAL_ENV:-}" ]; then
    echo "install_peers.sh: activate metalearn's virtualenv first (source .venv/bin/activate)" >&2
    exit 2
fi
pip install --quiet -e "$repo[peers]"
build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
pip download --quiet --no-deps --no-binary :all: learn2learn==0.2.0 -d "$build"
tar xzf "$build/learn2learn-0.2.0.tar.gz" -C "$build"
cd "$build/learn2learn-0.2.0"
# the shipped C files come from a Cython too old for Python 3.11 (longintrepr.h)
cython -3 learn2learn/data/meta_dataset.pyx learn2learn/data/task_dataset.pyx \
    learn2learn/data/transforms.pyx
pip install --quiet --no-deps --no-build-isolation .
cd "$repo"
python - <<'PY'
import sys

sys.path.insert(0, "benchmarks")
import peer_l2l  # noqa: E402

print(f"learn2learn {peer_l2l.l2l.__version__} imports; tests/test_peer.py will run")
PY
