#!/usr/bin/env bash
# The long fuzzing run: every subcommand and adapter on byte-mutated qemu-made images, in
# process, under an address-space cap (tests/fuzzing.py). The test suite runs 2000 cases of it;
# this runs as many as you like. Any failure prints the case (seed:index) to replay with
#   .venv/bin/python tests/fuzzing.py --seed SEED --replay INDEX
# and then belongs in tests/test_fuzz.py as a regular test.
#
#   bash scripts/fuzz.sh                      # 100000 cases, seed from the clock, all CPUs
#   bash scripts/fuzz.sh --cases 5000 --seed 7 --workers 2
#   bash scripts/fuzz.sh --seconds 3600       # one hour
set -euo pipefail
cd "$(dirname "$0")/.."
command -v qemu-img >/dev/null || { echo "qemu-img missing: apt-get install qemu-utils" >&2; exit 1; }
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
exec .venv/bin/python tests/fuzzing.py "$@"
