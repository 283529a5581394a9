#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what it needs when missing (apt as root,
# or through sudo), creates .venv, then runs pytest (which runs ruff and mypy too).
# .ci/run calls this.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v qemu-img >/dev/null || missing+=(qemu-utils)
# The Prometheus server and promtool (tests/test_fleet.py runs the server with the rules).
command -v promtool >/dev/null && command -v prometheus >/dev/null || missing+=(prometheus)
command -v prometheus-node-exporter >/dev/null || missing+=(prometheus-node-exporter)
command -v influxd >/dev/null || missing+=(influxdb)
command -v icinga2 >/dev/null || missing+=(icinga2-bin icinga2-common)
command -v nagios4 >/dev/null || missing+=(nagios4-core)
[ -x /usr/lib/nagios/plugins/check_dummy ] || missing+=(monitoring-plugins-basic)
command -v losetup >/dev/null && command -v unshare >/dev/null || missing+=(util-linux)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
# Live usage (tests/test_live.py): a real libvirtd running TCG domains, plain qemu with QMP,
# and Debian's python3 with psutil, jinja2, prometheus_client and numpy (--check) for the runs
# as an unprivileged user (tests/test_live.py, tests/test_health.py).
command -v libvirtd >/dev/null || missing+=(libvirt-daemon libvirt-daemon-driver-qemu)
command -v virsh >/dev/null || missing+=(libvirt-clients)
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
command -v runuser >/dev/null || missing+=(util-linux)
# The guest that fills its volume until qemu pauses it (tests/enospc.py) is assembled with nasm.
command -v nasm >/dev/null || missing+=(nasm)
# The shipped agent configurations run the plugins through sudo (the sudoers drop-in). The
# Debian package (tests/test_debian_package.py) is built with the standard tools, checked by
# lintian and systemd-analyze, and installed in a private mount namespace (util-linux).
command -v systemd-analyze >/dev/null || missing+=(systemd)
for package in sudo build-essential debhelper dh-python pybuild-plugin-pyproject python3-all \
        python3-setuptools python3-wheel help2man lintian; do
    dpkg-query -W -f='${db:Status-Abbrev}' "$package" 2>/dev/null | grep -q '^ii' \
        || missing+=("$package")
done
/usr/bin/python3 -c 'import psutil, jinja2, prometheus_client, numpy' 2>/dev/null \
    || missing+=(python3-psutil python3-jinja2 python3-prometheus-client python3-numpy)
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "installing: ${missing[*]}"
    # Others may be installing at the same time on this machine: wait for the lock.
    $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'

# Lint (ruff) and type check (mypy --strict) run inside the suite: tests/test_quality.py.
exec .venv/bin/pytest -q "$@"
