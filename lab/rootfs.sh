#!/usr/bin/env bash
# Build (once) the Debian root file system the lab nodes boot from: $LAB_RELEASE (common.sh), bookworm or trixie.
# The finished tree is cached in $LAB_DIR/cache/rootfs-<key>; a second run only checks it.
# Usage: lab/rootfs.sh [--rebuild]
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
need_root
lab_lock

# Bump ROOTFS_VERSION whenever the recipe below changes in a way the package lists do not show.
ROOTFS_VERSION=4
BASE_PACKAGES=systemd,systemd-sysv,dbus,openssh-server,iproute2,python3,ca-certificates,curl,sudo,less
# barman-cli-cloud (3.13 on trixie, 3.4 on bookworm), the peer `python -m lab.bench --peers` measures pgbackup
# against, and the modules of barman-cloud-wal-archive's --zstd/--lz4 (3.13; its backups offer gzip, bzip2 and
# snappy only). python3-snappy is left out: its 0.5.3 fails on Python >= 3.10 ("PY_SSIZE_T_CLEAN macro must be
# defined").
NODE_PACKAGES="postgresql-$LAB_PG_VERSION postgresql-client-$LAB_PG_VERSION patroni python3-etcd python3-psycopg2 jq procps rsync"
NODE_PACKAGES="$NODE_PACKAGES barman-cli-cloud python3-zstandard python3-lz4"

key=$(printf '%s|%s|%s|%s' "$ROOTFS_VERSION" "$LAB_SUITE" "$BASE_PACKAGES" "$NODE_PACKAGES" | sha256sum | cut -c1-12)
# The key covers the release (its suite and package list): bookworm and trixie images are cached side by side.
ROOTFS="$LAB_DIR/cache/rootfs-$key"

if [ "${1:-}" = "--rebuild" ]; then
  rm -rf "$ROOTFS"
fi
if [ -f "$ROOTFS/.lab-rootfs-complete" ]; then
  log "rootfs cached: $ROOTFS ($(elapsed)s)"
  printf '%s\n' "$ROOTFS"
  exit 0
fi

command -v debootstrap >/dev/null || die "debootstrap missing (apt-get install debootstrap)"

# The nodes' apt sources: the host's own (same mirrors, same keyrings), with the host's release name replaced
# by the lab's in every Suites line (bookworm-security becomes trixie-security, and so on).
SOURCES=/etc/apt/sources.list.d/debian.sources
HOST_SUITE=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
[ -n "$HOST_SUITE" ] || die "no VERSION_CODENAME in /etc/os-release"
NODE_SOURCES=$(sed "/^Suites:/ s/\\<$HOST_SUITE\\>/$LAB_SUITE/g" "$SOURCES")
# The mirror to bootstrap from: the first URI of the first stanza that carries $LAB_SUITE.
MIRROR=${LAB_MIRROR:-$(printf '%s\n' "$NODE_SOURCES" | awk -v suite="$LAB_SUITE" '
  /^URIs:/ { uri = $2 }
  /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite && uri != "") { print uri; exit } }
  /^$/ { uri = "" }')}
[ -n "$MIRROR" ] || die "no mirror for $LAB_SUITE found in $SOURCES"

mkdir -p "$LAB_DIR/cache"
BUILD="$ROOTFS.build"
cleanup() {
  local m
  for m in dev/pts dev proc sys; do
    if mountpoint -q "$BUILD/$m" 2>/dev/null; then umount -l "$BUILD/$m"; fi
  done
}
trap cleanup EXIT
cleanup
rm -rf "$BUILD"

log "debootstrap $LAB_SUITE from $MIRROR (minbase + $BASE_PACKAGES)"
debootstrap --variant=minbase --include="$BASE_PACKAGES" "$LAB_SUITE" "$BUILD" "$MIRROR" \
  >"$LAB_DIR/cache/debootstrap.log" 2>&1 || { tail -20 "$LAB_DIR/cache/debootstrap.log" >&2; die "debootstrap failed"; }
log "debootstrap done ($(elapsed)s)"

# apt inside the nodes reaches the mirror exactly as the host's apt does: same sources, same Acquire settings
# (proxy, validity checks). The nodes share the host's network and get a copy of its resolv.conf.
rm -f "$BUILD/etc/apt/sources.list"
printf '%s\n' "$NODE_SOURCES" >"$BUILD/etc/apt/sources.list.d/debian.sources"
for f in /etc/apt/apt.conf.d/*; do
  # Acquire settings (proxy, Check-Valid-Until, ...), but no hooks that call tools the node lacks.
  if [ -f "$f" ] && grep -qiE '^[[:space:]]*Acquire' "$f" && ! grep -qi 'Invoke' "$f"; then
    cp "$f" "$BUILD/etc/apt/apt.conf.d/"
  fi
done
if [ -f /etc/apt/apt.conf ]; then cp /etc/apt/apt.conf "$BUILD/etc/apt/apt.conf"; fi

# No daemon may start inside the chroot while packages are installed.
printf '#!/bin/sh\nexit 101\n' >"$BUILD/usr/sbin/policy-rc.d"
chmod 0755 "$BUILD/usr/sbin/policy-rc.d"
mount -t proc proc "$BUILD/proc"
mount --bind /dev "$BUILD/dev"
mount --bind /dev/pts "$BUILD/dev/pts"
mount -t sysfs sysfs "$BUILD/sys"
cp /etc/resolv.conf "$BUILD/etc/resolv.conf"

log "installing $NODE_PACKAGES"
# shellcheck disable=SC2086 # NODE_PACKAGES is a word list
chroot "$BUILD" /usr/bin/env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 sh -ec "
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $NODE_PACKAGES
  # Patroni creates and owns the cluster: drop the one Debian's postinst made, make no new ones.
  if [ -d /etc/postgresql/$LAB_PG_VERSION/main ]; then pg_dropcluster $LAB_PG_VERSION main; fi
  sed -i 's/^#\\?[[:space:]]*create_main_cluster.*/create_main_cluster = false/' /etc/postgresql-common/createcluster.conf
  apt-get clean
" >"$LAB_DIR/cache/chroot-install.log" 2>&1 || { tail -30 "$LAB_DIR/cache/chroot-install.log" >&2; die "package install failed"; }
cleanup
rm -f "$BUILD/usr/sbin/policy-rc.d"
log "packages installed ($(elapsed)s)"

# Per-node identity is created by up.sh: no shared host keys or machine id in the image.
rm -f "$BUILD"/etc/ssh/ssh_host_*
: >"$BUILD/etc/machine-id"
rm -f "$BUILD/var/lib/dbus/machine-id"

# Debian's patroni.service reads /etc/patroni/config.yml; the tool (and the production nodes) use patroni.yml.
ln -sfn patroni.yml "$BUILD/etc/patroni/config.yml"
install -d -o root -g root -m 0755 "$BUILD/etc/systemd/system/multi-user.target.wants"
ln -sfn /lib/systemd/system/patroni.service "$BUILD/etc/systemd/system/multi-user.target.wants/patroni.service"
# Units that only cost boot time or fail in a container sharing the host's network and kernel.
for unit in systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
  e2scrub_reap.service fstrim.timer getty@tty1.service console-getty.service; do
  ln -sfn /dev/null "$BUILD/etc/systemd/system/$unit"
done
# sshd gets its address from up.sh; a name for the lab root user's shells.
printf 'export LANG=C.UTF-8\n' >"$BUILD/etc/profile.d/lab-lang.sh"

printf 'version=%s release=%s key=%s built=%s mirror=%s\n' "$ROOTFS_VERSION" "$LAB_RELEASE" "$key" "$(date -u +%FT%TZ)" "$MIRROR" \
  >"$BUILD/.lab-rootfs-complete"
rm -rf "$ROOTFS"
mv "$BUILD" "$ROOTFS"
trap - EXIT
log "rootfs ready: $ROOTFS, $(du -sh "$ROOTFS" | cut -f1) ($(elapsed)s)"
printf '%s\n' "$ROOTFS"
