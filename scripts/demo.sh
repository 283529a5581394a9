#!/usr/bin/env bash
# The main job on a fresh machine: install the project in .venv and analyse the shipped sample
# images (samples/, made by scripts/make-samples.sh) with the core and every adapter.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e .
bin=.venv/bin
run() { echo; echo "\$ $*"; "$@" || echo "(exit $?)"; }
run $bin/qcow2-analyze usage samples/
run $bin/qcow2-analyze usage --output json samples/top.qcow2
run $bin/qcow2-analyze info samples/encrypted.qcow2
run $bin/qcow2-analyze check samples/leaky.qcow2
run $bin/qcow2-analyze -f samples/top.qcow2 -v -o raw
run $bin/check_qcow2 -f samples/top.qcow2 -f samples/leaky.qcow2 -w 80 -c 90 --check
run $bin/qcow2-telegraf --chain samples/top.qcow2
run $bin/qcow2-textfile --output - samples/
