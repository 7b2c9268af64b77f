#!/usr/bin/env bash
# Builds the whole stack into .venv, idempotently. Why a script and not just `pip install -e .`:
# Detectron2 has no PyPI release for Python 3.11, and mmcv has no wheel for this torch; both need steps
# pip alone cannot express.
#
# mmcv comes in two flavours. Default (MMCV_OPS=0): built without its compiled ops in seconds, with
# scripts/mmcv_ext_standin.py as `mmcv._ext` so that `import mmseg` works; no toolkit model calls a
# compiled op, and one that is called stops naming the op. MMCV_OPS=1: the full C++ build (its
# setup.py pins C++17, torch 2.14 headers need C++20): a long build (docs/install.md), once, then cached.
set -euo pipefail

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
# User-level so that a fresh clone elsewhere (CI) reuses the compiled mmcv wheel.
WHEEL_CACHE=${WHEEL_CACHE:-$HOME/.cache/mae-toolkit/wheels}
MMCV_VERSION=2.1.0
MMCV_OPS=${MMCV_OPS:-0}
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

# The flavour installed now: "full" (compiled mmcv._ext), "lite" (the stand-in) or "none".
mmcv_flavour() {
    "$PY" - "$MMCV_VERSION" <<'PYEOF' 2>/dev/null || echo none
import sys
import mmcv, mmcv._ext
assert mmcv.__version__ == sys.argv[1]
print("full" if mmcv._ext.__file__.endswith(".so") else "lite")
PYEOF
}

build_mmcv_wheel() {  # $1: 1 with compiled ops, 0 without
    local work
    work=$(mktemp -d)
    if [ "$1" = 1 ]; then
        log "building mmcv $MMCV_VERSION with compiled ops (a long C++ build, once; docs/install.md)"
    else
        log "building mmcv $MMCV_VERSION without compiled ops (seconds; MMCV_OPS=1 for the full build)"
    fi
    # --no-build-isolation: the build must see the venv's torch, or it silently produces a wheel without ops.
    "${PIP[@]}" download --no-deps --no-binary :all: --no-build-isolation "mmcv==$MMCV_VERSION" -d "$work"
    tar -xzf "$work/mmcv-$MMCV_VERSION.tar.gz" -C "$work"
    local src="$work/mmcv-$MMCV_VERSION"
    sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"
    (cd "$src" && MMCV_WITH_OPS=$1 FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-2} \
        "$OLDPWD/$PY" -m pip wheel -q --no-build-isolation --no-deps -w "$work/dist" .)
    repack_mmcv_wheel "$work"/dist/mmcv*.whl
    rm -rf "$work"
}

repack_mmcv_wheel() {
    # Strip debug info (32 MB -> 2 MB), put the stand-in `mmcv._ext` into a wheel without ops, and ask
    # for headless OpenCV like the toolkit does: mmcv's setup.py picks opencv-python or -headless by
    # what the build env happens to hold.
    local work
    work=$(mktemp -d)
    "$PY" -m wheel unpack -d "$work" "$1" >/dev/null
    local root=("$work"/mmcv*/)  # mmcv-2.1.0/ or mmcv_lite-2.1.0/
    find "$root" -name '_ext*.so' -exec strip --strip-debug {} +
    if ! ls "$root"/mmcv/_ext*.so >/dev/null 2>&1; then
        cp scripts/mmcv_ext_standin.py "$root/mmcv/_ext.py"
    fi
    sed -i 's/^Requires-Dist: opencv-python>=3$/Requires-Dist: opencv-python-headless>=3/' "$root"/mmcv*.dist-info/METADATA
    mkdir -p "$WHEEL_CACHE" "$work/packed"
    "$PY" -m wheel pack -d "$work/packed" "$root" >/dev/null
    mv "$work"/packed/mmcv*.whl "$WHEEL_CACHE/"
    rm -rf "$work"
}

# mmcv (full) and mmcv-lite are two distributions of one `mmcv` package: one goes before the other comes.
install_mmcv() {  # $1: the cached wheel's file-name prefix
    "${PIP[@]}" uninstall -y -q mmcv mmcv-lite 2>/dev/null || true
    log "installing $(basename "$WHEEL_CACHE"/$1-$MMCV_VERSION-*.whl)"
    "${PIP[@]}" install "$WHEEL_CACHE"/$1-$MMCV_VERSION-*.whl
}

flavour=$(mmcv_flavour)
if [ "$MMCV_OPS" = 1 ] && [ "$flavour" != full ]; then
    ls "$WHEEL_CACHE"/mmcv-$MMCV_VERSION-*.whl >/dev/null 2>&1 || build_mmcv_wheel 1
    install_mmcv mmcv
elif [ "$flavour" = none ]; then
    ls "$WHEEL_CACHE"/mmcv_lite-$MMCV_VERSION-*.whl >/dev/null 2>&1 || build_mmcv_wheel 0
    install_mmcv mmcv_lite
elif [ "$MMCV_OPS" = 0 ] && [ "$flavour" = full ]; then
    log "keeping the installed mmcv with compiled ops (a superset of the default)"
fi

if ! "$PY" -c 'import detectron2' 2>/dev/null; then
    # The registry copy is a cp310 wheel; its pure-Python part runs on 3.11 and its _C is skipped
    # (COCO evaluation then uses pycocotools). It also ships a top-level `tools` package: drop it.
    log "installing sal-detectron2==0.7.2 (no importable detectron2 found)"
    site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    tmp=$(mktemp -d)
    "${PIP[@]}" install --no-deps --only-binary=:all: --python-version 3.10 --target "$tmp" sal-detectron2==0.7.2
    rm -rf "$tmp/tools" "$tmp/bin"
    # Its metadata pins numpy<2 and black; the toolkit runs it with numpy 2 (its tests pass) and without
    # black (only LazyConfig's pretty-printing asks for it). Without the two pins pip's later checks
    # stay quiet instead of printing an ERROR for an install that works.
    log "sal-detectron2: dropping its stale 'numpy<2' and 'black' requirements from its metadata"
    sed -i -e 's/^Requires-Dist: numpy<2$/Requires-Dist: numpy/' -e '/^Requires-Dist: black$/d' \
        "$tmp"/sal_detectron2-*.dist-info/METADATA
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
