#!/usr/bin/env bash
# Builds the whole stack into .venv, idempotently. Why a script and not just `pip install -e .`:
# mmcv must be compiled (its setup.py pins C++17, torch 2.14 headers need C++20) and Detectron2 has
# no PyPI release for Python 3.11; both need steps pip alone cannot express.
set -euo pipefail

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
# User-level so that a fresh clone elsewhere (CI) reuses the compiled mmcv wheel.
WHEEL_CACHE=${WHEEL_CACHE:-$HOME/.cache/mae-toolkit/wheels}
MMCV_VERSION=2.1.0
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check -q)

log() { printf '[setup] %s\n' "$*"; }

if [ ! -x "$PY" ]; then
    log "creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi

if ! "$PY" -c 'import torch, torchvision; assert torch.__version__.startswith("2.14.1")' 2>/dev/null; then
    log "installing ${TORCH_PINS[*]}"
    "${PIP[@]}" install "${TORCH_PINS[@]}" 'setuptools>=77.0.3,<81' wheel ninja
fi

build_mmcv_wheel() {
    local work
    work=$(mktemp -d)
    log "building mmcv $MMCV_VERSION with compiled ops (13-18 min on two cores, once)"
    # --no-build-isolation: the build must see the venv's torch, or it silently produces a wheel without ops.
    "${PIP[@]}" download --no-deps --no-binary :all: --no-build-isolation "mmcv==$MMCV_VERSION" -d "$work"
    tar -xzf "$work/mmcv-$MMCV_VERSION.tar.gz" -C "$work"
    local src="$work/mmcv-$MMCV_VERSION"
    sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"
    (cd "$src" && MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-2} \
        "$OLDPWD/$PY" -m pip wheel --no-build-isolation --no-deps -w "$work/dist" .)
    repack_mmcv_wheel "$work"/dist/mmcv-*.whl
    rm -rf "$work"
}

repack_mmcv_wheel() {
    # Strip debug info (32 MB -> 2 MB), and ask for headless OpenCV like the toolkit does: mmcv's
    # setup.py picks opencv-python or -headless by what the build env happens to hold.
    local work
    work=$(mktemp -d)
    "$PY" -m wheel unpack -d "$work" "$1"
    find "$work" -name '_ext*.so' -exec strip --strip-debug {} +
    sed -i 's/^Requires-Dist: opencv-python>=3$/Requires-Dist: opencv-python-headless>=3/' "$work"/mmcv-*/mmcv-*.dist-info/METADATA
    mkdir -p "$WHEEL_CACHE" "$work/packed"
    "$PY" -m wheel pack -d "$work/packed" "$work"/mmcv-*/
    mv "$work"/packed/mmcv-*.whl "$WHEEL_CACHE/"
    rm -rf "$work"
}

if ! "$PY" -c 'import mmcv, mmcv.ops; assert mmcv.__version__ == "'$MMCV_VERSION'"' 2>/dev/null; then
    if ! ls "$WHEEL_CACHE"/mmcv-$MMCV_VERSION-*.whl >/dev/null 2>&1; then
        build_mmcv_wheel
    fi
    log "installing mmcv from $WHEEL_CACHE"
    "${PIP[@]}" install "$WHEEL_CACHE"/mmcv-$MMCV_VERSION-*.whl
fi

if ! "$PY" -c 'import detectron2' 2>/dev/null; then
    # The registry copy is a cp310 wheel; its pure-Python part runs on 3.11 and its _C is skipped
    # (COCO evaluation then uses pycocotools). It also ships a top-level `tools` package: drop it.
    log "installing sal-detectron2==0.7.2 (no importable detectron2 found)"
    site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    tmp=$(mktemp -d)
    "${PIP[@]}" install --no-deps --only-binary=:all: --python-version 3.10 --target "$tmp" sal-detectron2==0.7.2
    rm -rf "$tmp/tools" "$tmp/bin"
    cp -r "$tmp"/* "$site/"
    rm -rf "$tmp"
fi

# Real images for the demo and the tests (Fashion-MNIST, MIT licence), from Debian's packages.
if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "installing Debian package dataset-fashion-mnist"
        apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }
    else
        log "Fashion-MNIST missing: run 'sudo apt-get install -y dataset-fashion-mnist' for the demo and tests"
    fi
fi

log "installing the toolkit with extras det, seg, dev"
"${PIP[@]}" install -e '.[det,seg,dev]'
"$PY" -m mae_app.env
