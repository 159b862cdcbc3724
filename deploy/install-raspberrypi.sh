#!/usr/bin/env bash
# Install SkyCourier on a Raspberry Pi (Raspberry Pi OS 64-bit, Bookworm): user, venv with the
# package, models, systemd unit, udev rules, example configuration, and the GPIO UART enabled
# for the flight controller or modem (serial console off). Safe to run twice.
#
#   sudo deploy/install-raspberrypi.sh [--dry-run] [--no-models] [PACKAGE]
#
# PACKAGE is the SkyCourier source tree or a wheel; default: the tree this script is in.
# A UART change needs a reboot; the script says so when it made one.
set -euo pipefail

PLATFORM="Raspberry Pi OS"
# shellcheck source-path=SCRIPTDIR source=install-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/install-common.sh"

platform_option() { die "unknown option $1 (see --help)"; }

platform_usage() { :; }

platform_python_packages() {
    # Every dependency has aarch64 wheels on PyPI (onnxruntime with the CPU provider).
    pip_install "$PACKAGE"
}

platform_models_args() {
    # The [vision] default, int8: the fastest on the Pi's CPU.
    :
}

# raspi-config's nonint get_* print 0 for "enabled"; do_serial_hw 0 enables the UART,
# do_serial_cons 1 disables the login console on it (which would answer the autopilot's bytes).
platform_setup() {
    if [[ -n $ROOT ]]; then
        log "DESTDIR: UART left as it is (raspi-config changes the running system's boot files);" \
            "on the Pi run: sudo raspi-config nonint do_serial_hw 0 && sudo raspi-config" \
            "nonint do_serial_cons 1"
        return
    fi
    if ! command -v raspi-config >/dev/null; then
        warn "no raspi-config: enable the UART yourself (enable_uart=1 in config.txt, and" \
            "console=serial0 out of cmdline.txt)"
        return
    fi
    local reboot=0
    if [[ $(raspi-config nonint get_serial_hw) == 0 ]]; then
        log "UART: enabled"
    else
        run raspi-config nonint do_serial_hw 0
        reboot=1
    fi
    if [[ $(raspi-config nonint get_serial_cons) == 0 ]]; then
        run raspi-config nonint do_serial_cons 1
        reboot=1
    else
        log "serial console: off"
    fi
    if ((reboot && DRY_RUN)); then
        log "the UART change would need a reboot"
    elif ((reboot)); then
        log "UART changed: reboot for it to take effect (sudo reboot)"
    fi
}

install_main "$@"
