#!/usr/bin/env bash
# Check, on an x86_64 Debian or Ubuntu machine, that SkyCourier installs on a fresh 64-bit
# Raspberry Pi OS (Bookworm) from wheels alone: Debian bookworm arm64, bootstrapped with
# debootstrap from Debian's packages, runs under qemu-user emulation, and
# deploy/install-raspberrypi.sh runs inside it as root, as on a Pi, with pip refusing every
# source distribution (only-binary = :all: in the root's /etc/pip.conf), so a dependency that
# would need a compiler fails loudly. The one exception is named in PURE_SDISTS below. Then every
# installed distribution is listed with its wheel and checked for aarch64 tags
# (deploy/wheel-report.py), the package is imported and its commands run under emulation.
#
#   sudo deploy/check-arm64.sh [--dry-run] [--bootstrap-only] [--no-models]
#       [--runner auto|chroot|proot] [--mirror URL] ROOTFS
#
# ROOTFS is a folder outside the checkout. ROOTFS/bootstrap holds the bootstrapped system and
# is kept for the next run (the slow part: minutes under emulation); ROOTFS/pi is a fresh copy
# of it for each run, so every run installs on an untouched system. Expect 20-40 minutes.
#
# What a chroot cannot do is left out, as the install script's own checks decide: systemd and
# udevd are not running (systemctl enables the unit through its files; daemon-reload and
# udevadm are left to the system that boots), there is no UART and no raspi-config (it warns
# and goes on).
# A fresh Raspberry Pi OS Lite has more than this system (python3-venv, build-essential): the
# venv module is deliberately left out, and the package lists emptied as on a Pi OS image, so
# the install script's own `apt-get` path runs; no compiler is installed, so nothing can build.
set -euo pipefail

SUITE=bookworm
MIRROR=http://deb.debian.org/debian
# What a Raspberry Pi OS Lite image has that the install script needs; nothing else (pi-gen
# bootstraps with ca-certificates too).
INCLUDE=ca-certificates,python3
# Dependencies that PyPI publishes only as a source distribution and that contain no code to
# compile, so pip may build them (into a py*-none-any wheel, checked in step 4):
# face_recognition_models 0.3.0 (the first with the 5-point landmark model) is four dlib model
# files and a short __init__.py; its only wheel is 0.1.3. Names as PEP 503 normalises them.
PURE_SDISTS=(face-recognition-models)
SRC=/usr/local/src/skycourier
VENV=/opt/skycourier/venv
MODELS=/var/lib/skycourier/models
CHECKOUT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# A clean environment inside, as a root login on the Pi would have. QEMU_CPU: qemu emulates the
# Raspberry Pi 4's core (ARMv8.0; the Pi 5's Cortex-A76 runs all it does), not its default
# "max" CPU, so a wheel built for a newer ARM architecture would fail here as on the Pi.
INSIDE_ENV=(env -i HOME=/root LANG=C.UTF-8 TERM=dumb QEMU_CPU=cortex-a72
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)

DRY_RUN=0
BOOTSTRAP_ONLY=0
INSTALL_ARGS=()
RUNNER=auto
ROOTFS=
MOUNTED=()

log() { printf '%s\n' "$*"; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

usage() {
    cat <<EOF
usage: $(basename "$0") [--dry-run] [--bootstrap-only] [--no-models] [--runner auto|chroot|proot]
       [--mirror URL] ROOTFS

Install SkyCourier in an emulated Debian $SUITE arm64 (a fresh 64-bit Raspberry Pi OS as far as
a chroot allows) from aarch64 wheels only, and check what was installed. Steps:

  1. bootstrap  debootstrap --arch=arm64 --foreign $SUITE into ROOTFS/bootstrap, then its
                second stage under qemu-aarch64 (skipped when ROOTFS/bootstrap is complete)
  2. copy       a fresh ROOTFS/pi from it, with this checkout in $SRC
  3. install    deploy/install-raspberrypi.sh inside, as root, with only-binary = :all: in
                /etc/pip.conf (PIP_NO_BINARY exempts ${PURE_SDISTS[*]}: sdist only)
  4. wheels     every distribution in $VENV with its wheel: aarch64 or pure only,
                and pip built no wheel but SkyCourier's own and the exempted ones
  5. run        import every dependency, skycourier --help, skycourier check (nothing
                configured: a table of failures, no traceback), skycourier detect on a
                sample image with the built model
  6. again      the install a second time: it must succeed and change no file it installed

  ROOTFS            a folder outside the checkout (created; ROOTFS/bootstrap is reused)
  --dry-run         print the steps' commands, change nothing
  --bootstrap-only  step 1 only: prepare ROOTFS for later runs
  --no-models       pass --no-models to the install (skips the model build and step 5's detect)
  --runner R        chroot (binfmt_misc runs arm64 binaries), proot (PRoot with
                    qemu-aarch64-static, no binfmt_misc needed) or auto (chroot if it works)
  --mirror URL      Debian mirror (default $MIRROR)

needs: root, debootstrap, qemu-user-static, rsync; proot for --runner proot
EOF
}

parse_args() {
    while (($# > 0)); do
        case $1 in
        --dry-run) DRY_RUN=1 ;;
        --bootstrap-only) BOOTSTRAP_ONLY=1 ;;
        --no-models) INSTALL_ARGS+=(--no-models) ;;
        --runner | --mirror)
            (($# >= 2)) || die "$1 needs a value (see --help)"
            if [[ $1 == --runner ]]; then RUNNER=$2; else MIRROR=$2; fi
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        -*) die "unknown option $1 (see --help)" ;;
        *)
            [[ -z $ROOTFS ]] || die "one ROOTFS only, got '$ROOTFS' and '$1'"
            ROOTFS=$1
            ;;
        esac
        shift
    done
    [[ -n $ROOTFS ]] || die "no ROOTFS given (see --help)"
    case $RUNNER in auto | chroot | proot) ;; *) die "--runner is auto, chroot or proot, not '$RUNNER'" ;; esac
    ROOTFS=$(realpath -m "$ROOTFS")
    case $ROOTFS/ in
    "$CHECKOUT"/*) die "ROOTFS $ROOTFS is inside the checkout: choose a folder outside it" ;;
    /) die "ROOTFS cannot be /" ;;
    esac
}

# Run a command that changes something; with --dry-run, only say it.
run() {
    if ((DRY_RUN)); then
        printf 'would run:'
    else
        printf '+'
    fi
    printf ' %q' "$@"
    printf '\n'
    ((DRY_RUN)) || "$@"
}

step_started=
step() {
    if [[ -n $step_started ]]; then
        log "   ($((SECONDS - step_started)) s)"
    fi
    step_started=$SECONDS
    log "== $*"
}

check_host() {
    local tool missing=()
    ((DRY_RUN)) && return
    ((EUID == 0)) || die "run as root (debootstrap, chroot and mount need it), or with --dry-run"
    for tool in debootstrap qemu-aarch64-static rsync; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    ((${#missing[@]} == 0)) ||
        die "missing ${missing[*]}: apt install debootstrap qemu-user-static rsync"
}

# -- running commands inside a root -------------------------------------------------------------

# Whether an arm64 program runs in ROOT through chroot: binfmt_misc must hand it to qemu with
# the interpreter opened at registration (the F flag of Debian's qemu-user-static).
chroot_works() { chroot "$1" /bin/true 2>/dev/null; }

pick_runner() {
    local root=$1
    if [[ $RUNNER == auto ]]; then
        if ((DRY_RUN)); then
            log "runner: chroot if binfmt_misc runs arm64 programs, else proot (shown: chroot)"
            RUNNER=chroot
            return
        elif chroot_works "$root"; then
            RUNNER=chroot
        elif command -v proot >/dev/null; then
            RUNNER=proot
        else
            die "cannot run arm64 programs: mount binfmt_misc and enable qemu-aarch64" \
                "(mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc;" \
                "update-binfmts --enable qemu-aarch64), or apt install proot"
        fi
    elif [[ $RUNNER == chroot ]] && ((!DRY_RUN)) && ! chroot_works "$root"; then
        die "chroot cannot run arm64 programs: binfmt_misc has no qemu-aarch64 with the F flag"
    elif [[ $RUNNER == proot ]] && ((!DRY_RUN)); then
        command -v proot >/dev/null || die "--runner proot needs proot: apt install proot"
    fi
    log "runner: $RUNNER"
}

# Mount what programs in ROOT expect (chroot runner only; PRoot binds them itself). Not /sys:
# the host's describes x86 hardware, and onnxruntime 1.32, which reads it at import (CPU and
# device discovery), crashes on it under emulation; without it, it warns that cpuinfo found
# nothing and runs. A Pi has its own.
mount_root() {
    local root=$1
    [[ $RUNNER == chroot ]] || return 0
    run mount -t proc proc "$root/proc"
    ((DRY_RUN)) || MOUNTED+=("$root/proc")
    run mount --rbind /dev "$root/dev"
    ((DRY_RUN)) || MOUNTED+=("$root/dev")
    # Unmounting $root/dev later must not reach the host's own /dev mounts.
    run mount --make-rslave "$root/dev"
}

unmount_all() {
    local i
    ((${#MOUNTED[@]} > 0)) || return 0
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
        umount -R "${MOUNTED[i]}" 2>/dev/null || umount -R -l "${MOUNTED[i]}" ||
            printf 'warning: could not unmount %s\n' "${MOUNTED[i]}" >&2
    done
    MOUNTED=()
}

# Something is mounted at or below PATH (never delete such a tree: it may be the host's /dev).
mounted_below() {
    local path=$1
    awk -v p="$path" '$2 == p || index($2, p "/") == 1 { found = 1 } END { exit !found }' \
        /proc/self/mounts
}

# Run a command as root inside ROOT, in a clean environment (extra NAME=VALUE words first).
in_root() {
    local root=$1
    shift
    case $RUNNER in
    chroot) run chroot "$root" "${INSIDE_ENV[@]}" "$@" ;;
    proot)
        run proot -0 -q qemu-aarch64-static -r "$root" -b /dev -b /proc -w / \
            "${INSIDE_ENV[@]}" "$@"
        ;;
    esac
}

# -- the steps ------------------------------------------------------------------------------

bootstrap() {
    local base=$ROOTFS/bootstrap done=$ROOTFS/bootstrap.done
    step "1. bootstrap Debian $SUITE arm64 in $base"
    if [[ -f $done ]]; then
        log "complete already ($(<"$done")): reused"
        pick_runner "$base"
        return
    fi
    if [[ -e $base ]] && ((!DRY_RUN)); then
        die "$base exists but its bootstrap did not finish (no $done): remove it and run again"
    fi
    run mkdir -p "$base"
    run debootstrap --arch=arm64 --foreign --include="$INCLUDE" "$SUITE" "$base" "$MIRROR"
    pick_runner "$base"
    mount_root "$base"
    in_root "$base" /debootstrap/debootstrap --second-stage
    ((DRY_RUN)) || unmount_all
    # As on Raspberry Pi OS: Debian's main, security and updates; lists emptied as pi-gen does
    # before it writes the image (export-image/02-set-sources).
    if ((DRY_RUN)); then
        log "would write $base/etc/apt/sources.list and empty $base/var/lib/apt/lists"
    else
        cat >"$base/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main contrib non-free non-free-firmware
deb http://deb.debian.org/debian-security/ $SUITE-security main contrib non-free non-free-firmware
deb $MIRROR $SUITE-updates main contrib non-free non-free-firmware
EOF
        find "$base/var/lib/apt/lists" -type f -delete
        printf '%s %s %s include=%s, %s\n' "$SUITE" arm64 "$MIRROR" "$INCLUDE" "$(date -u +%FT%TZ)" \
            >"$done"
    fi
}

fresh_copy() {
    local base=$ROOTFS/bootstrap pi=$ROOTFS/pi
    step "2. fresh copy $pi, checkout in $SRC"
    if [[ -e $pi ]]; then
        ! mounted_below "$pi" || die "something is still mounted below $pi: unmount it first"
        run rm -rf --one-file-system "$pi"
    fi
    run rsync -aHAX "$base/" "$pi/"
    # The files `git status` would show (tracked and untracked, not ignored), no .git.
    run rsync -a --filter=':- .gitignore' --exclude=/.git "$CHECKOUT/" "$pi$SRC/"
    run cp /etc/resolv.conf "$pi/etc/resolv.conf"
    mount_root "$pi"
    # Certificate authorities this machine added to its own store (a TLS-inspecting proxy's,
    # say): without them pip inside cannot reach PyPI the way the host does. A Pi behind such
    # a proxy needs them the same way; Debian's pip reads the system store.
    if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
        run cp /usr/local/share/ca-certificates/*.crt "$pi/usr/local/share/ca-certificates/"
        in_root "$pi" update-ca-certificates
    fi
    # Every pip inside (the install's, the model build's `pip download`) refuses sdists; pip
    # applies PIP_NO_BINARY after its configuration files, so the exemptions hold.
    if ((DRY_RUN)); then
        log "would write $pi/etc/pip.conf: [global] only-binary = :all:"
    else
        printf '[global]\nonly-binary = :all:\n' >"$pi/etc/pip.conf"
    fi
    if ((!DRY_RUN)); then
        log "inside: $(in_root "$pi" uname -m | tail -n 1), $(in_root "$pi" python3 --version |
            tail -n 1), compiler: $(in_root "$pi" sh -c 'command -v cc gcc || echo none' |
            tail -n 1)"
    fi
}

install() {
    local pi=$ROOTFS/pi
    step "3. install: $SRC/deploy/install-raspberrypi.sh${INSTALL_ARGS[*]:+ ${INSTALL_ARGS[*]}}"
    if ((DRY_RUN)); then
        install_inside
        return
    fi
    install_inside 2>&1 | tee "$pi/root/install.log"
}

# PIP_USE_PEP517: pip builds the exempted sdists into wheels (whose tags step 4 checks) rather
# than running their setup.py install, as pip 23.0 does for --no-binary projects.
install_inside() {
    local IFS=,
    in_root "$ROOTFS/pi" "PIP_NO_BINARY=${PURE_SDISTS[*]}" PIP_USE_PEP517=1 PIP_PROGRESS_BAR=off \
        bash "$SRC/deploy/install-raspberrypi.sh" "${INSTALL_ARGS[@]}"
}

wheels() {
    local pi=$ROOTFS/pi built name others=()
    step "4. wheels installed in $VENV"
    in_root "$pi" "$VENV/bin/python" "$SRC/deploy/wheel-report.py" --arch aarch64 \
        --local skycourier
    ((DRY_RUN)) && return
    # pip names each wheel it builds from source; PEP 503 names, to compare with PURE_SDISTS.
    built=$(grep -o 'Building wheel for [^ ]*' "$pi/root/install.log" | cut -d' ' -f4 |
        tr 'A-Z_.' 'a-z--' | sort -u | paste -sd' ' || true)
    log "pip built from source: ${built:-nothing}"
    for name in $built; do
        [[ " skycourier ${PURE_SDISTS[*]} " == *" $name "* ]] || others+=("$name")
    done
    ((${#others[@]} == 0)) || die "pip built from source: ${others[*]} (not in PURE_SDISTS)"
}

# Every top-level module the package and its dependencies are imported by, with the time.
IMPORTS='
import importlib, time
for name in ("companion", "firmware_bridge", "models", "sim", "numpy", "onnx", "onnxruntime",
             "cv2", "dlib", "face_recognition_models", "pymavlink.mavutil", "serial", "pynmea2",
             "pyubx2", "paho.mqtt.client", "pydantic", "matplotlib.pyplot", "rich",
             "cryptography.hazmat.primitives.asymmetric.ed25519", "shapely", "pyproj",
             "ortools.constraint_solver.pywrapcp", "prometheus_client"):
    t = time.monotonic()
    module = importlib.import_module(name)
    version = getattr(module, "__version__", "")
    print(f"import {name:<50} {time.monotonic() - t:6.2f} s  {version}")
import onnxruntime
print("onnxruntime providers:", ", ".join(onnxruntime.get_available_providers()))
'

exercise() {
    local pi=$ROOTFS/pi status
    local as_service=(runuser -u skycourier -- env HOME=/var/lib/skycourier
        "SKYCOURIER_MODELS=$MODELS")
    step "5. run under emulation"
    in_root "$pi" "$VENV/bin/python" -c "$IMPORTS"
    in_root "$pi" "$VENV/bin/skycourier" --help
    # dlib-bin's aarch64 build reads face_recognition_models' files (the 68-point predictor
    # alone is 100 MB).
    in_root "$pi" "$VENV/bin/python" -c \
        'from companion.identity.faces import load_models; load_models(); print("face models: loaded")'
    # Nothing is configured or connected: every device fails, with its fix, and nothing crashes.
    local check=("${as_service[@]}" "$VENV/bin/skycourier" check --config /etc/skycourier/skycourier.toml)
    if ((DRY_RUN)); then
        in_root "$pi" "${check[@]}"
        return
    fi
    status=0
    in_root "$pi" "${check[@]}" >"$pi/root/check.log" 2>&1 || status=$?
    cat "$pi/root/check.log"
    log "skycourier check: exit status $status"
    ! grep -q Traceback "$pi/root/check.log" || die "skycourier check crashed (traceback above)"
    ((status == 1)) || die "skycourier check should fail with nothing connected (status 1)"
    if [[ " ${INSTALL_ARGS[*]} " == *" --no-models "* ]]; then
        log "skycourier detect: skipped (--no-models)"
    else
        in_root "$pi" "${as_service[@]}" "$VENV/bin/skycourier" detect --json \
            "$MODELS/sources/bus.jpg"
    fi
}

# What the install owns outside the venv: each path with its type, mode, owner, link target
# and content (not modification times: the model build writes manifest.json again, with the
# same text, on every run); the users and groups it made; and the venv's distributions with
# their versions (pip reinstalls a source tree every time, so the venv's own files are
# rewritten, with the same content).
installed_state() {
    local pi=$ROOTFS/pi
    local owned=(etc/skycourier etc/systemd/system etc/udev/rules.d var/lib/skycourier/models)
    (
        cd "$pi"
        find "${owned[@]}" -xdev -printf '%p %y %m %U:%G %l\n' | sort
        find "${owned[@]}" -xdev -type f -print0 | sort -z | xargs -0 sha256sum
    )
    grep skycourier "$pi/etc/passwd" "$pi/etc/group"
    in_root "$pi" "$VENV/bin/python" -m pip list --disable-pip-version-check --format=freeze |
        grep -v '^+'
}

again() {
    local pi=$ROOTFS/pi before after
    step "6. install again: nothing changes"
    ((DRY_RUN)) && return
    before=$(installed_state)
    install_inside
    after=$(installed_state)
    if [[ $before != "$after" ]]; then
        diff <(printf '%s\n' "$before") <(printf '%s\n' "$after") || true
        die "the second install changed what the first installed (diff above)"
    fi
    log "second install: files, users and packages unchanged"
}

main() {
    parse_args "$@"
    check_host
    ((DRY_RUN)) && log "dry run: nothing is changed"
    trap unmount_all EXIT
    local started=$SECONDS
    bootstrap
    if ((!BOOTSTRAP_ONLY)); then
        fresh_copy
        install
        wheels
        exercise
        again
    fi
    step "done in $((SECONDS - started)) s"
}

main "$@"
