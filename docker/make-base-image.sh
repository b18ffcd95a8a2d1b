#!/usr/bin/env bash
# Make the base image the crate's Dockerfiles build FROM, without any container
# registry: debootstrap a Debian trixie root file system from Debian's package
# mirror and `docker import` it.
#
# The image already carries postgresql-17 and pgbouncer, so the Dockerfiles'
# install step finds them and needs no network inside `docker build`.
#
# Idempotent: does nothing when the image already exists.
#
#   docker/make-base-image.sh [IMAGE]      (default: pgbouncer-fixtures/debian-base:trixie)
#
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

image="${1:-${PGBF_LOCAL_BASE_IMAGE:-pgbouncer-fixtures/debian-base:trixie}}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if docker image inspect "$image" >/dev/null 2>&1; then
  echo "make-base-image: $image already exists, nothing to do"
  exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "make-base-image: installing debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  else
    echo "make-base-image: debootstrap is missing; install it (apt-get install debootstrap) and run again" >&2
    exit 1
  fi
fi

root="$(mktemp -d /tmp/pgbf-rootfs.XXXXXX)"
trap 'rm -rf "$root"' EXIT

start=$(date +%s)
echo "make-base-image: debootstrap trixie from $mirror into $root"
debootstrap --variant=minbase --include=postgresql-17,pgbouncer trixie "$root" "$mirror" >/tmp/pgbf-debootstrap.log 2>&1 || {
  echo "make-base-image: debootstrap failed; last lines of /tmp/pgbf-debootstrap.log:" >&2
  tail -n 20 /tmp/pgbf-debootstrap.log >&2
  exit 1
}
# Keep the image lean: package lists and caches are rebuilt by apt-get update.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
# The postgresql-common package creates a cluster at install; the images run
# their own initdb on tmpfs, so drop it.
rm -rf "$root"/var/lib/postgresql/17/main "$root"/etc/postgresql/17/main
echo "deb $mirror trixie main" >"$root"/etc/apt/sources.list

echo "make-base-image: importing as $image"
tar -C "$root" -c . | docker import -c 'CMD ["bash"]' - "$image" >/dev/null
echo "make-base-image: $image ready in $(( $(date +%s) - start )) s"
