#!/usr/bin/env bash
# Make the base image the crate's Dockerfiles build FROM, without any container
# registry: debootstrap a Debian root file system from Debian's package mirror
# and `docker import` it.
#
# trixie (the default) carries postgresql-17 and pgbouncer (1.24); bookworm
# carries postgresql-15 only, for stacks of PGBF_POSTGRES_VERSION=15 (their
# PgBouncer image stays trixie's: bookworm's 1.18 has no prepared-statement
# tracking). The Dockerfiles' install step then finds the packages and needs
# no network inside `docker build`.
#
# Idempotent: does nothing when the image already exists.
#
#   docker/make-base-image.sh [--suite trixie|bookworm] [IMAGE]
#       (default IMAGE: pgbouncer-fixtures/debian-base:SUITE)
#
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

suite=trixie
if [ "${1:-}" = --suite ]; then
  suite="${2:-}"
  shift 2 || shift $#
fi
case "$suite" in
  trixie) packages=postgresql-17,pgbouncer major=17 ;;
  bookworm) packages=postgresql-15 major=15 ;;
  *)
    echo "make-base-image: unknown suite '$suite'; use trixie (PostgreSQL 17) or bookworm (PostgreSQL 15)" >&2
    exit 2
    ;;
esac
if [ "$suite" = trixie ]; then
  default_image="${PGBF_LOCAL_BASE_IMAGE:-pgbouncer-fixtures/debian-base:trixie}"
else
  default_image="pgbouncer-fixtures/debian-base:$suite"
fi
image="${1:-$default_image}"
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
echo "make-base-image: debootstrap $suite ($packages) from $mirror into $root"
debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" >/tmp/pgbf-debootstrap.log 2>&1 || {
  echo "make-base-image: debootstrap failed; last lines of /tmp/pgbf-debootstrap.log:" >&2
  tail -n 20 /tmp/pgbf-debootstrap.log >&2
  exit 1
}
# Keep the image lean: package lists and caches are rebuilt by apt-get update.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
# The postgresql-common package creates a cluster at install; the images run
# their own initdb on tmpfs, so drop it.
rm -rf "$root/var/lib/postgresql/$major/main" "$root/etc/postgresql/$major/main"
echo "deb $mirror $suite main" >"$root"/etc/apt/sources.list

echo "make-base-image: importing as $image"
tar -C "$root" -c . | docker import -c 'CMD ["bash"]' - "$image" >/dev/null
echo "make-base-image: $image ready in $(( $(date +%s) - start )) s"
