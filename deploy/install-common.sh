# shellcheck shell=bash
# The parts of SkyCourier's install that Raspberry Pi OS and Jetson share; sourced by
# install-raspberrypi.sh and install-jetson.sh, never run on its own.
#
# Every step checks before it changes anything, so running an install twice changes nothing the
# second time (and a changed file is replaced, an existing configuration never).
#
# The platform script defines, before calling install_main:
#   PLATFORM                      a word for messages ("Raspberry Pi OS", "Jetson")
#   platform_option NAME VALUE    takes an option this file does not know (or dies)
#   platform_usage                prints the platform's own options
#   platform_python_packages      installs the package and its dependencies into the venv
#   platform_models_args          prints `skycourier models build` arguments, one per line
#   platform_setup                the platform's own steps (UART, ...)
#
# Environment:
#   DESTDIR  install under this folder instead of / (for tests and image staging): every file
#            goes below it, useradd/usermod/groupadd and systemctl get --root, and what only a
#            running system can do (udevadm, raspi-config, systemctl daemon-reload) is skipped
#            with a note. A venv made under DESTDIR works only at that path.
#   PYTHON   the interpreter for the venv (default python3; SkyCourier needs 3.10 or newer)

SERVICE_USER=skycourier
DEVICE_GROUPS=(dialout video gpio)
VENV=/opt/skycourier/venv
STATE_DIR=/var/lib/skycourier
MODELS_DIR=$STATE_DIR/models
CONFIG_DIR=/etc/skycourier
CONFIG=$CONFIG_DIR/skycourier.toml
UNIT=/etc/systemd/system/skycourier.service
RULES=/etc/udev/rules.d/99-skycourier.rules
DEPLOY_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

ROOT=${DESTDIR:-}
ROOT=${ROOT%/}
PYTHON=${PYTHON:-python3}
DRY_RUN=0
BUILD_MODELS=1
PACKAGE=
UNIT_CHANGED=0
RULES_CHANGED=0

log() { printf '%s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# Run a command that changes the system; with --dry-run, only say it.
run() {
    if ((DRY_RUN)); then
        printf 'would run:'
        printf ' %q' "$@"
        printf '\n'
    else
        printf '+'
        printf ' %q' "$@"
        printf '\n'
        "$@"
    fi
}

usage() {
    cat <<EOF
Install SkyCourier on $PLATFORM: user $SERVICE_USER, venv $VENV, models, systemd unit, udev rules
and an example configuration. Safe to run again (after an upgrade, say): it changes only what
differs, and never overwrites $CONFIG.

usage: $(basename "$0") [--dry-run] [--no-models] [options] [PACKAGE]

  PACKAGE      the SkyCourier source tree or a built wheel (.whl); default: the source tree
               this script is in
  --dry-run    print what would be done, change nothing
  --no-models  skip \`skycourier models build\` (build later as user $SERVICE_USER)
EOF
    platform_usage
    cat <<EOF

environment: DESTDIR (install below this folder), PYTHON (default python3)
EOF
}

parse_args() {
    while (($# > 0)); do
        case $1 in
        --dry-run) DRY_RUN=1 ;;
        --no-models) BUILD_MODELS=0 ;;
        -h | --help)
            usage
            exit 0
            ;;
        --*=*) platform_option "${1%%=*}" "${1#*=}" ;;
        --*)
            (($# >= 2)) || die "$1 needs a value (see --help)"
            platform_option "$1" "$2"
            shift
            ;;
        *)
            [[ -z $PACKAGE ]] || die "one PACKAGE only, got '$PACKAGE' and '$1'"
            PACKAGE=$1
            ;;
        esac
        shift
    done
    if [[ -z $PACKAGE ]]; then
        PACKAGE=$(dirname "$DEPLOY_DIR")
        [[ -f $PACKAGE/pyproject.toml ]] || die "no PACKAGE given and $PACKAGE is no source tree"
    fi
    [[ -e $PACKAGE ]] || die "PACKAGE $PACKAGE does not exist"
    if [[ -d $PACKAGE ]]; then
        [[ -f $PACKAGE/pyproject.toml ]] || die "$PACKAGE has no pyproject.toml: not a source tree"
    elif [[ $PACKAGE != *.whl ]]; then
        die "PACKAGE $PACKAGE is neither a source tree nor a wheel (.whl)"
    fi
    PACKAGE=$(cd "$(dirname "$PACKAGE")" && pwd)/$(basename "$PACKAGE")
}

check_privileges() {
    if ((EUID != 0)) && [[ -z $ROOT ]] && ((!DRY_RUN)); then
        die "run as root (sudo $0 ...), or with --dry-run, or with DESTDIR=folder"
    fi
}

check_python() {
    local version
    version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])') ||
        die "cannot run $PYTHON; set PYTHON to a Python 3.10+ interpreter"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
        die "SkyCourier needs Python 3.10 or newer, $PYTHON is $version; set PYTHON to another"
    if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
        if [[ -z $ROOT ]] && command -v apt-get >/dev/null; then
            # A fresh Raspberry Pi OS image ships with empty package lists: install alone
            # finds no candidate.
            run apt-get update
            run apt-get install -y --no-install-recommends "python$version-venv"
        else
            die "$PYTHON cannot make virtual environments: install python$version-venv"
        fi
    fi
}

# -- users and groups (read from DESTDIR's files, or the system's databases) --------------------

root_opt() { [[ -z $ROOT ]] || printf -- '--root\n%s\n' "$ROOT"; }

passwd_entry() {
    if [[ -n $ROOT ]]; then
        grep -s "^$1:" "$ROOT/etc/passwd"
    else
        getent passwd "$1"
    fi
}

group_entry() {
    if [[ -n $ROOT ]]; then
        grep -s "^$1:" "$ROOT/etc/group"
    else
        getent group "$1"
    fi
}

# The groups in DEVICE_GROUPS that $SERVICE_USER is not in yet, comma-separated.
missing_memberships() {
    local group members missing=()
    for group in "${DEVICE_GROUPS[@]}"; do
        members=$(group_entry "$group" | cut -d: -f4) || members=
        [[ ,$members, == *,"$SERVICE_USER",* ]] || missing+=("$group")
    done
    local IFS=,
    printf '%s' "${missing[*]}"
}

ensure_groups() {
    local group roots
    mapfile -t roots < <(root_opt)
    for group in "${DEVICE_GROUPS[@]}"; do
        if group_entry "$group" >/dev/null; then
            log "group $group: present"
        else
            # The unit's SupplementaryGroups= names it: without the group the unit cannot start.
            run groupadd "${roots[@]}" --system "$group"
        fi
    done
}

ensure_user() {
    local roots groups
    mapfile -t roots < <(root_opt)
    if passwd_entry "$SERVICE_USER" >/dev/null; then
        groups=$(missing_memberships)
        if [[ -n $groups ]]; then
            run usermod "${roots[@]}" --append --groups "$groups" "$SERVICE_USER"
        else
            log "user $SERVICE_USER: present, in ${DEVICE_GROUPS[*]}"
        fi
    else
        local IFS=,
        run useradd "${roots[@]}" --system --user-group --home-dir "$STATE_DIR" --no-create-home \
            --shell /usr/sbin/nologin --groups "${DEVICE_GROUPS[*]}" "$SERVICE_USER"
    fi
}

# "uid:gid" of $SERVICE_USER, numeric so that it also works for a user that exists only under
# DESTDIR; empty during a dry run that has not created the user.
service_ids() {
    passwd_entry "$SERVICE_USER" | cut -d: -f3,4 || true
}

# Give PATH (recursively with -R) to the service user, if it is not theirs already.
own() {
    local recursive=() depth=(-maxdepth 0) ids
    if [[ $1 == -R ]]; then
        recursive=(-R)
        depth=()
        shift
    fi
    ids=$(service_ids)
    if [[ -z $ids ]]; then
        ((DRY_RUN)) && log "would give $1 to $SERVICE_USER" && return
        die "user $SERVICE_USER is missing"
    fi
    if ((EUID != 0)); then
        log "not root: $1 left to $(id -un) (give it to $SERVICE_USER when the image is built)"
        return
    fi
    if [[ -n $(find "$ROOT$1" "${depth[@]}" \( ! -uid "${ids%:*}" -o ! -gid "${ids#*:}" \) -print -quit) ]]; then
        run chown "${recursive[@]}" "$ids" "$ROOT$1"
    fi
}

# -- files ------------------------------------------------------------------------------------

ensure_dir() { # PATH MODE [owned]
    if [[ -d $ROOT$1 ]]; then
        log "folder $1: present"
    else
        run install -d -m "$2" "$ROOT$1"
    fi
    if [[ ${3:-} == owned ]] && [[ -d $ROOT$1 ]]; then
        own "$1"
    fi
}

# Install SRC as DEST (mode MODE) unless DEST already has the same content; 0 if it changed.
install_file() {
    local src=$1 dest=$2 mode=$3
    if [[ -f $ROOT$dest ]] && cmp -s "$src" "$ROOT$dest"; then
        log "$dest: up to date"
        return 1
    fi
    run install -D -m "$mode" "$src" "$ROOT$dest"
}

install_files() {
    ensure_dir "$CONFIG_DIR" 0755
    ensure_dir "$STATE_DIR" 0750 owned
    if install_file "$DEPLOY_DIR/skycourier.service" "$UNIT" 0644; then UNIT_CHANGED=1; fi
    if install_file "$DEPLOY_DIR/99-skycourier.rules" "$RULES" 0644; then RULES_CHANGED=1; fi
    # The reference copy follows the installed version; the configuration itself is the
    # operator's and is never overwritten.
    install_file "$DEPLOY_DIR/skycourier.example.toml" "$CONFIG_DIR/skycourier.example.toml" 0644 ||
        true
    if [[ -e $ROOT$CONFIG ]]; then
        log "$CONFIG: kept (an existing configuration is never overwritten)"
    else
        # 0640 root:skycourier: it may hold the SIM PIN; the daemon reads it, nobody else.
        run install -m 0640 "$DEPLOY_DIR/skycourier.example.toml" "$ROOT$CONFIG"
        local ids
        ids=$(service_ids)
        if ((EUID == 0)) && [[ -n $ids ]]; then
            run chgrp "${ids#*:}" "$ROOT$CONFIG"
        fi
    fi
}

# -- the virtual environment --------------------------------------------------------------------

venv_python() { printf '%s' "$ROOT$VENV/bin/python"; }

ensure_venv() {
    ensure_dir "$(dirname "$VENV")" 0755
    if [[ -x $(venv_python) ]]; then
        log "venv $VENV: present"
    else
        run "$PYTHON" -m venv "$ROOT$VENV"
    fi
}

# pip install into the venv. --prefer-binary: a wheel, even an older one, over building from
# source, so nothing is compiled on the drone where a wheel exists.
pip_install() {
    run "$(venv_python)" -m pip install --disable-pip-version-check --prefer-binary "$@"
}

build_models() {
    if ((!BUILD_MODELS)); then
        log "models: skipped (--no-models); build them with: sudo -u $SERVICE_USER" \
            "$VENV/bin/skycourier models build --out $MODELS_DIR"
        return
    fi
    ensure_dir "$MODELS_DIR" 0750 owned
    local args
    mapfile -t args < <(platform_models_args)
    local build=("$ROOT$VENV/bin/skycourier" models build --quiet --out "$ROOT$MODELS_DIR" "${args[@]}")
    # Already built models whose inputs match are kept, so this is quick the second time.
    if [[ -z $ROOT ]]; then
        run runuser -u "$SERVICE_USER" -- env HOME="$STATE_DIR" "${build[@]}"
    else
        run "${build[@]}"
        [[ ! -d $ROOT$MODELS_DIR ]] || own -R "$MODELS_DIR"
    fi
}

# -- the running system -------------------------------------------------------------------------

enable_service() {
    if [[ -n $ROOT ]]; then
        if systemctl --root="$ROOT" is-enabled --quiet skycourier.service 2>/dev/null; then
            log "skycourier.service: enabled"
        else
            run systemctl --root="$ROOT" enable skycourier.service
        fi
        log "DESTDIR: systemctl daemon-reload and udevadm left to the system that boots it"
        return
    fi
    # In a chroot (an image being built) neither systemd nor udevd runs: systemctl enables the
    # unit through the files alone, and reloading is left to the system that boots the image.
    # (sd_booted(3) tests /run/systemd/system; udevd listens on /run/udev/control.)
    if ((UNIT_CHANGED)) && [[ -d /run/systemd/system ]]; then
        run systemctl daemon-reload
    elif ((UNIT_CHANGED)); then
        log "systemd is not running: systemctl daemon-reload left to the system that boots"
    fi
    if systemctl is-enabled --quiet skycourier.service 2>/dev/null; then
        log "skycourier.service: enabled"
    else
        run systemctl enable skycourier.service
    fi
    if ((RULES_CHANGED)) && [[ -S /run/udev/control ]]; then
        run udevadm control --reload
        run udevadm trigger --subsystem-match=tty
    elif ((RULES_CHANGED)); then
        log "udevd is not running: the rules take effect when the system boots"
    fi
}

install_main() {
    parse_args "$@"
    check_privileges
    ((DRY_RUN)) && log "dry run: nothing is changed"
    log "installing SkyCourier from $PACKAGE on $PLATFORM${ROOT:+ under $ROOT}"
    check_python
    ensure_groups
    ensure_user
    install_files
    ensure_venv
    platform_python_packages
    build_models
    platform_setup
    enable_service
    cat <<EOF
done. Next: edit $CONFIG (vehicle.connection, e.g. "/dev/skycourier-fc:115200" or
"/dev/serial0:921600"; gps.port; modem.port), then: sudo systemctl restart skycourier
and follow it with: journalctl -u skycourier -f
EOF
}
