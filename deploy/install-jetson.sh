#!/usr/bin/env bash
# Install SkyCourier on an NVIDIA Jetson (JetPack 6: Ubuntu 22.04, Python 3.10): user, venv with
# the package, ONNX Runtime with the CUDA and TensorRT providers, models, systemd unit, udev
# rules, example configuration. Safe to run twice.
#
#   sudo deploy/install-jetson.sh [--dry-run] [--no-models] \
#       [--ort-wheel FILE-OR-URL | --ort-index URL] [PACKAGE]
#
# ONNX Runtime's GPU build for Jetson is not on PyPI (PyPI's aarch64 onnxruntime has the CPU
# provider only). It must match the JetPack release (its CUDA, cuDNN and TensorRT) and the
# Python version, so this script does not guess where to get it: give it either a wheel
# (--ort-wheel; NVIDIA publishes onnxruntime-gpu wheels per JetPack release, listed on its
# Jetson Zoo page) or a package index serving `onnxruntime-gpu` for your JetPack (--ort-index).
# Without either the CPU build is installed and the script says so; the detector then runs on
# the CPU. Then set [vision] variant = "fp16" in /etc/skycourier/skycourier.toml.
#
# The UART on the 40-pin header is /dev/ttyTHS0 or /dev/ttyTHS1 depending on the module; if
# the nvgetty service (a login console on a UART) is installed, it is disabled.
set -euo pipefail

PLATFORM="Jetson"
ORT_WHEEL=
ORT_INDEX=
# shellcheck source-path=SCRIPTDIR source=install-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/install-common.sh"

platform_option() {
    case $1 in
    --ort-wheel) ORT_WHEEL=$2 ;;
    --ort-index) ORT_INDEX=$2 ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
    if [[ -n $ORT_WHEEL && -n $ORT_INDEX ]]; then
        die "give --ort-wheel or --ort-index, not both"
    fi
}

platform_usage() {
    cat <<EOF
  --ort-wheel FILE-OR-URL  an onnxruntime-gpu wheel built for this JetPack and Python
  --ort-index URL          a package index serving onnxruntime-gpu for this JetPack
EOF
}

# SkyCourier's requirements except onnxruntime, one per line: ONNX Runtime comes from the GPU
# build, which pip knows under another name (onnxruntime-gpu) and which installs the same files.
REQUIREMENTS_BUT_ORT='
import importlib.metadata as md, re
for req in md.requires("skycourier") or []:
    name = re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0].lower()
    if "extra ==" not in req and name != "onnxruntime":
        print(req)
'

platform_python_packages() {
    if [[ -z $ORT_WHEEL && -z $ORT_INDEX ]]; then
        warn "no --ort-wheel or --ort-index: installing ONNX Runtime's CPU build from PyPI; the" \
            "detector will not use the GPU (rerun with one of them to change that)"
        pip_install "$PACKAGE"
        return
    fi
    pip_install --no-deps "$PACKAGE"
    if ((DRY_RUN)); then
        log "would install SkyCourier's requirements except onnxruntime"
    else
        local requirements
        requirements=$(mktemp)
        "$(venv_python)" -c "$REQUIREMENTS_BUT_ORT" >"$requirements"
        if [[ -s $requirements ]]; then
            pip_install -r "$requirements"
        fi
        rm -f "$requirements"
    fi
    # The CPU build and the GPU build install the same files: the CPU one must go first, and
    # the GPU one is then reinstalled so that none of its files is missing.
    local force=()
    if "$(venv_python)" -m pip show --quiet onnxruntime >/dev/null 2>&1; then
        run "$(venv_python)" -m pip uninstall --yes onnxruntime
        force=(--force-reinstall --no-deps)
    fi
    if [[ -n $ORT_WHEEL ]]; then
        pip_install "${force[@]}" "$ORT_WHEEL"
    else
        pip_install "${force[@]}" --extra-index-url "$ORT_INDEX" onnxruntime-gpu
    fi
    check_providers
}

check_providers() {
    ((DRY_RUN)) && return
    local providers
    providers=$("$(venv_python)" -c \
        'import onnxruntime as o; print(" ".join(o.get_available_providers()))') || providers=
    if [[ " $providers " == *" CUDAExecutionProvider "* ]]; then
        log "ONNX Runtime providers: $providers"
    else
        warn "ONNX Runtime offers no CUDAExecutionProvider (${providers:-none}): is the wheel" \
            "built for this JetPack release?"
    fi
}

platform_models_args() {
    # int8 for the CPU default, fp16 for the GPU ([vision] variant = "fp16").
    printf '%s\n' --variant int8 --variant fp16
}

platform_setup() {
    if [[ -n $ROOT ]]; then
        if [[ -e $ROOT/etc/systemd/system/nvgetty.service || -e $ROOT/lib/systemd/system/nvgetty.service ]] &&
            systemctl --root="$ROOT" is-enabled --quiet nvgetty.service 2>/dev/null; then
            run systemctl --root="$ROOT" disable nvgetty.service
        fi
        return
    fi
    if systemctl cat nvgetty.service >/dev/null 2>&1; then
        if systemctl is-enabled --quiet nvgetty.service 2>/dev/null; then
            run systemctl disable --now nvgetty.service
        else
            log "nvgetty (serial console): off"
        fi
    fi
}

install_main "$@"
