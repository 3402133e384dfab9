#!/usr/bin/env bash
# Debian packages the test suite needs beyond Node: radosgw (a real S3, started by the vitest global
# setup through test/services/radosgw.sh) and Chromium (the playground's end-to-end test).
# Installs only what is missing; quiet; uses sudo when not root.
set -euo pipefail
missing=()
command -v radosgw >/dev/null || missing+=(radosgw)
command -v ceph-mon >/dev/null || missing+=(ceph-mon)
command -v ceph-osd >/dev/null || missing+=(ceph-osd)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=$([ "$(id -u)" -eq 0 ] || echo sudo)
echo "installing system packages: ${missing[*]}"
$sudo apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
