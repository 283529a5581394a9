#!/usr/bin/env bash
# Makes the small sample images shipped in samples/ (committed; rerun only to refresh them).
# Needs qemu-utils. Each is a few hundred KiB: 4 KiB clusters, a 64 MiB virtual disk.
set -euo pipefail
cd "$(dirname "$0")/../samples"
rm -f ./*.qcow2
img() { qemu-img create -q -f qcow2 -o cluster_size=4096 "$@"; }
io() { qemu-io -f qcow2 "$@" >/dev/null; }
# A backing chain with relative names: base <- top.
img base.qcow2 64M
io -c 'write -P 0xb0 0 256k' -c 'write -P 0xb1 32M 128k' base.qcow2
img -b base.qcow2 -F qcow2 top.qcow2
io -c 'write -P 0x70 64k 64k' top.qcow2
qemu-img snapshot -c before-upgrade top.qcow2
io -c 'write -P 0x71 1M 64k' top.qcow2
# LUKS-encrypted: analysed without its passphrase ("sample" here, only to write data).
qemu-img create -q -f qcow2 --object secret,id=s,data=sample \
    -o cluster_size=4096,encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10 \
    encrypted.qcow2 64M
qemu-io --object secret,id=s,data=sample \
    --image-opts "driver=qcow2,file.filename=encrypted.qcow2,encrypt.key-secret=s" \
    -c 'write -P 0xe0 0 128k' >/dev/null
# Leaked clusters: a refcount raised by hand (the check reports them, usage is unaffected).
img leaky.qcow2 64M
io -c 'write -P 0x1e 0 64k' leaky.qcow2
python3 - <<'PY'
import struct
with open("leaky.qcow2", "r+b") as f:
    f.seek(48); reftable = struct.unpack(">Q", f.read(8))[0]
    f.seek(reftable); block = struct.unpack(">Q", f.read(8))[0]
    f.seek(block + 2 * 1); f.write(struct.pack(">H", 2))  # cluster 1: refcount 1 -> 2
PY
ls -l ./*.qcow2
