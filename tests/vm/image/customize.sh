#!/bin/bash
# mmdebstrap --customize-hook for the sjob test image (called by vmtest.py).
# Runs on the HOST, as root, after all packages are installed; mmdebstrap has
# mounted /proc, /sys and /dev in the chroot and copied in the host's
# resolv.conf, so `chroot` commands have host-speed CPU and network.
#
# usage: customize.sh ROOTFS SUITE REQUIREMENTS_TXT CA_BUNDLE SJOB_DEPS_TXT RUNTIME_REQUIREMENTS_TXT
set -euo pipefail

root=$1 suite=$2 requirements=$3 ca_bundle=$4 sjob_deps=$5 runtime_requirements=$6
here=$(dirname "$(readlink -f "$0")")
wheels=/var/cache/sjob/wheels

log() { printf 'sjob-image: %s\n' "$*"; }
# A clean environment: the host's PIP_*, REQUESTS_CA_BUNDLE, SSL_CERT_FILE...
# name host paths and would silently override what we pass below.
in_root() {
    chroot "$root" env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
        PIP_PROGRESS_BAR=off "$@"
}

log "static files from tests/vm/image/rootfs"
# --no-overwrite-dir keeps the metadata of existing directories (e.g. /etc).
tar -C "$here/rootfs" --owner=0 --group=0 --numeric-owner --mode=go-w -cf - . |
    tar -C "$root" --no-overwrite-dir -xpf -

log "hostname, fstab, locale"
echo sjob-vm >"$root/etc/hostname"
cat >"$root/etc/hosts" <<'EOF'
127.0.0.1	localhost
127.0.1.1	sjob-vm
::1		localhost ip6-localhost ip6-loopback
EOF
# Pass 0: the root disk is a fresh overlay of a clean image, fsck buys nothing.
echo '/dev/vda / ext4 rw,errors=remount-ro 0 0' >"$root/etc/fstab"
echo 'LANG=C.UTF-8' >"$root/etc/default/locale"
# Persistent journal (journald's Storage=auto uses it when it exists).
mkdir -p "$root/var/log/journal"

log "systemd units"
# The serial console is ttyS0: a getty there would hang up the other writers.
ln -sfn /dev/null "$root/etc/systemd/system/serial-getty@ttyS0.service"
in_root systemctl enable systemd-networkd.service
# Never let networking delay boot.
ln -sfn /dev/null "$root/etc/systemd/system/systemd-networkd-wait-online.service"
# Periodic maintenance would only add noise and load to timing-sensitive tests.
for timer in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
    e2scrub_all.timer fstrim.timer man-db.timer; do
    ln -sfn /dev/null "$root/etc/systemd/system/$timer"
done

log "wheelhouse $wheels (python: $(in_root python3 --version))"
install -m 0644 "$ca_bundle" "$root/tmp/sjob-ca.crt"
install -m 0644 "$requirements" "$root/tmp/sjob-requirements.txt"
# A throwaway venv: Debian's own pip refuses to touch the system (PEP 668) and
# is older; the venv's pip builds sdists (systemd-python) against the image's
# libsystemd-dev, for the image's Python.
in_root python3 -m venv /tmp/sjob-wheelbuild
# PIP_CERT (not just --cert) so that pip's isolated build environments verify
# too.  --use-pep517: systemd-python has only a setup.py, and bookworm's pip
# 23.0 would otherwise run `setup.py bdist_wheel` without the wheel package.
in_root env PIP_CERT=/tmp/sjob-ca.crt /tmp/sjob-wheelbuild/bin/pip wheel --use-pep517 --wheel-dir "$wheels" -r /tmp/sjob-requirements.txt
rm -rf "$root/tmp/sjob-wheelbuild" "$root/tmp/sjob-requirements.txt" "$root/tmp/sjob-ca.crt"
ls "$root$wheels"

log "test venv /opt/sjob-test"
in_root python3 -m venv /opt/sjob-test
in_root /opt/sjob-test/bin/pip install --no-index --find-links "$wheels" pytest pytest-timeout pytest-xdist hypothesis pexpect
in_root /opt/sjob-test/bin/pytest --version

# install.sh's first run in each VM boot then finds sjob's dependencies and the functions runtime up to date, as
# on a machine where sjob was installed before: it builds and installs sjob itself and skips minutes of emulated
# CPU spent unpacking and byte-compiling pandas. tests/integration/test_zz_install.py uninstalls and installs from
# nothing, so that path is tested too. The runtime's stamp is what install.sh compares (install_runtime).
log "pre-installed: /opt/sjob with sjob's dependencies, /opt/sjob/runtime"
install -m 0644 "$sjob_deps" "$root/tmp/sjob-deps.txt"
install -m 0644 "$runtime_requirements" "$root/tmp/sjob-runtime.txt"
in_root python3 -m venv /opt/sjob
in_root /opt/sjob/bin/pip install -q --no-index --find-links "$wheels" -r /tmp/sjob-deps.txt
in_root python3 -m venv /opt/sjob/runtime
in_root /opt/sjob/runtime/bin/pip install -q --no-index --find-links "$wheels" -r /tmp/sjob-runtime.txt
printf '%s pip %s\n' "$(sha256sum "$runtime_requirements" | cut -d' ' -f1)" \
    "$(in_root python3 -c 'import ensurepip; print(ensurepip.version())')" >"$root/opt/sjob/runtime/.sjob-requirements"
rm -f "$root/tmp/sjob-deps.txt" "$root/tmp/sjob-runtime.txt"

log "slirp DNS (after pip: until now the host's resolv.conf was needed)"
echo 'nameserver 10.0.2.3' >"$root/etc/resolv.conf"
rm -rf "$root/root/.cache"
log "done ($suite)"
