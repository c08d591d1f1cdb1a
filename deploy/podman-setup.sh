#!/usr/bin/env bash
# Prepare podman on a Debian machine that has no Docker engine and no container registry
# (see the project's docs on containers): install podman, write containers.conf, build a
# Debian base image with debootstrap and local stand-ins for the registry images that the
# Dockerfile and docker-compose.yml name. Test harness only: the project's Dockerfile and
# compose file stay the standard ones a Docker user runs.
#
# Idempotent: every step checks whether it is already done and skips it.
# Needs root. Caches live under $CORRAL_DEPLOY_CACHE (default /var/tmp/corral-deploy),
# never in the repository (the rootfs holds this machine's CA certificates).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${CORRAL_DEPLOY_CACHE:-/var/tmp/corral-deploy}"
SUITE="${CORRAL_DEBIAN_SUITE:-bookworm}"
BASE="localhost/debian:${SUITE}"

say() { printf '[podman-setup] %s\n' "$*"; }
die() { printf '[podman-setup] FAIL: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (apt-get, debootstrap and rootful podman need it)"
mkdir -p "$CACHE"

# 1. packages ---------------------------------------------------------------------------
need=()
for p in podman buildah runc debootstrap; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  say "apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${need[@]}" >/dev/null
else
  say "packages present (podman $(podman --version | awk '{print $3}'))"
fi

# 2. containers.conf: ulimits at most this machine's hard limits; runc (crun refuses hybrid cgroups)
nofile="$(ulimit -Hn)"; [ "$nofile" = unlimited ] && nofile=1048576
nproc="$(ulimit -Hu)"; { [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
conf=/etc/containers/containers.conf
want="$(printf '%s\n' \
  '# written by corral deploy/podman-setup.sh' \
  '[containers]' \
  "default_ulimits = [\"nofile=${nofile}:${nofile}\", \"nproc=${nproc}:${nproc}\"]" \
  '[engine]' \
  'runtime = "runc"')"
if [ -f "$conf" ] && [ "$(cat "$conf")" = "$want" ]; then
  say "containers.conf up to date (nofile=${nofile}, nproc=${nproc})"
elif [ -f "$conf" ] && ! grep -q 'corral deploy/podman-setup.sh' "$conf"; then
  say "containers.conf exists and was not written by this script: leaving it alone"
else
  mkdir -p /etc/containers
  printf '%s\n' "$want" > "$conf"
  say "wrote containers.conf (nofile=${nofile}, nproc=${nproc}, runtime=runc)"
fi

# 3. Debian base image from the archive -------------------------------------------------
if podman image exists "$BASE"; then
  say "base image $BASE present"
else
  mirror="$(grep -h -m1 -E '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | head -1)"
  [ -n "$mirror" ] || mirror="$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null)"
  [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
  rootfs="$CACHE/rootfs-$SUITE"
  rm -rf "$rootfs"
  say "debootstrap $SUITE from $mirror (about a minute)"
  debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$rootfs" "$mirror" \
    > "$CACHE/debootstrap.log" 2>&1 || { tail -20 "$CACHE/debootstrap.log"; die "debootstrap"; }
  # the host's apt sources (only the enabled Debian ones)
  rm -f "$rootfs/etc/apt/sources.list"
  mkdir -p "$rootfs/etc/apt/sources.list.d"
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && cp "$f" "$rootfs/etc/apt/sources.list.d/"
  done
  [ -s /etc/apt/sources.list ] && grep -q deb.debian.org /etc/apt/sources.list \
    && cp /etc/apt/sources.list "$rootfs/etc/apt/sources.list"
  # locally added CA certificates (HTTPS to PyPI from a container needs them); never committed
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$rootfs/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null 2>&1 || die "update-ca-certificates in rootfs"
  fi
  chroot "$rootfs" apt-get clean
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*.log
  tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null 2>&1
  rm -rf "$rootfs"
  say "imported $BASE"
fi

# 4. stand-ins for the registry images, tagged with exactly the names the files use --------
build_standin() { # name dir
  local name="$1" dir="$2" sum
  sum="$(cat "$dir"/* | sha256sum | cut -c1-16)"
  if podman image exists "$name" \
     && [ "$(podman image inspect -f '{{ index .Labels "corral.standin" }}' "$name" 2>/dev/null)" = "$sum" ]; then
    say "stand-in $name present"
    return
  fi
  say "building stand-in $name"
  podman build -q --pull=never --build-arg "BASE=$BASE" --label "corral.standin=$sum" \
    -t "$name" "$dir" > "$CACHE/standin-$(basename "$dir").log" 2>&1 \
    || { tail -30 "$CACHE/standin-$(basename "$dir").log"; die "stand-in $name"; }
}
build_standin docker.io/library/python:3.11-slim "$HERE/stand-ins/python"
build_standin docker.io/library/postgres:16 "$HERE/stand-ins/postgres"
build_standin docker.io/library/redis:7 "$HERE/stand-ins/redis"
say "done"
