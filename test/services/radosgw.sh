#!/usr/bin/env bash
# A throwaway S3 endpoint for tests: Ceph's radosgw on loopback, backed by one monitor and one
# in-memory (memstore) OSD, with no cephx and no systemd. Everything lives in one directory.
#
#   test/services/radosgw.sh start [DIR]   start a cluster in DIR (default: a new temp dir), print DIR
#   test/services/radosgw.sh env   [DIR]   print `export ...` lines for the test suite (eval them)
#   test/services/radosgw.sh stop  [DIR]   kill the daemons and remove DIR
#
# By hand: dir=$(test/services/radosgw.sh start) && eval "$(test/services/radosgw.sh env "$dir")"
# (DIR defaults to $STEPWISE_RADOSGW_DIR for env/stop.) The vitest global setup (test/setup/) does
# the same once per run, with STEPWISE_RADOSGW_OWNER_PID set so that the cluster goes away with
# the test run however it ends. Needs the Debian packages radosgw, ceph-mon and ceph-osd (.ci/run).
set -euo pipefail

# Known credentials: the cluster is private to this run and listens on 127.0.0.1 only.
readonly ACCESS_KEY="stepwise-test-access-key"
readonly SECRET_KEY="stepwise-test-secret-key"
readonly BUCKET="stepwise-test"
readonly REGION="us-east-1"
# Memstore keeps every object in RAM; this is the ceiling the OSD reports, not an allocation.
# 4 GiB leaves room for a 400 MB adapter, its multipart parts and objects waiting for radosgw's
# garbage collection, below the OSD's 95% "full" threshold.
readonly MEMSTORE_BYTES=$((4 * 1024 * 1024 * 1024))
readonly START_TIMEOUT_S=60

die() { echo "radosgw.sh: $*" >&2; exit 1; }

free_port() {
  node -e 'const s = require("node:net").createServer();
    s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });'
}

# Waits until "$@" succeeds, or dies showing the daemon logs.
wait_for() {
  local what=$1; shift
  local deadline=$((SECONDS + START_TIMEOUT_S))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      tail -n 30 "$dir"/log/*.log >&2 || true
      die "timed out after ${START_TIMEOUT_S}s waiting for $what (logs in $dir/log)"
    fi
    sleep 0.2
  done
}

write_conf() {
  local mon_port=$1 rgw_port=$2 fsid=$3
  cat >"$dir/ceph.conf" <<EOF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$mon_port
public addr = 127.0.0.1
cluster addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
# Every path under this directory: no /var/lib/ceph, /var/run/ceph or /etc/ceph.
run dir = $dir/run
admin socket = $dir/run/\$name.asok
pid file = $dir/run/\$name.pid
log file = $dir/log/\$name.log
mon cluster log file = $dir/log/cluster.log
crash dir = $dir/crash
keyring = $dir/keyring
# One OSD: single-copy pools, CRUSH placing replicas across OSDs rather than hosts, and no
# warnings about the missing redundancy.
osd pool default size = 1
osd pool default min size = 1
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon allow pool delete = true
# radosgw creates about eight pools; small fixed PG counts keep one OSD under its PG limit.
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000

[mon]
mon data = $dir/mon/\$name

[osd]
osd data = $dir/osd/\$name
osd objectstore = memstore
memstore device bytes = $MEMSTORE_BYTES

[client.rgw]
# radosgw asks the monitor for an encrypted session by default, which needs cephx keys.
ms mon client mode = crc secure
rgw frontends = beast endpoint=127.0.0.1:$rgw_port
rgw data = $dir/rgw
# Reclaim the space of deleted and overwritten objects within a minute, not hours.
rgw gc obj min wait = 60
rgw gc processor period = 60
EOF
}

start() {
  dir=${1:-$(mktemp -d "${TMPDIR:-/tmp}/stepwise-radosgw.XXXXXX")}
  mkdir -p "$dir"/{run,log,crash,mon,osd,rgw}
  [[ -e $dir/ceph.conf ]] && die "$dir already holds a cluster (stop it first)"
  command -v radosgw >/dev/null || die "radosgw is not installed (apt-get install radosgw ceph-mon ceph-osd)"
  local mon_port rgw_port fsid osd_uuid conf=$dir/ceph.conf
  mon_port=$(free_port)
  rgw_port=$(free_port)
  fsid=$(cat /proc/sys/kernel/random/uuid)
  write_conf "$mon_port" "$rgw_port" "$fsid"
  : >"$dir/keyring"

  # 1. Monitor.
  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$dir/monmap" >/dev/null
  ceph-mon -c "$conf" -i a --mkfs --monmap "$dir/monmap"
  ceph-mon -c "$conf" -i a 2>>"$dir/log/startup.log"
  wait_for "the monitor" ceph -c "$conf" --connect-timeout 5 mon stat

  # 2. One memstore OSD.
  osd_uuid=$(cat /proc/sys/kernel/random/uuid)
  local osd_id
  osd_id=$(ceph -c "$conf" osd new "$osd_uuid")
  mkdir -p "$dir/osd/osd.$osd_id"
  ceph-osd -c "$conf" -i "$osd_id" --mkfs --osd-uuid "$osd_uuid" 2>>"$dir/log/startup.log"
  ceph-osd -c "$conf" -i "$osd_id" 2>>"$dir/log/startup.log"
  wait_for "the OSD" bash -c "ceph -c '$conf' osd dump | grep -q '^osd.$osd_id up'"

  # 3. The gateway, a user with the known keys, and the test bucket.
  radosgw -c "$conf" -n client.rgw 2>>"$dir/log/startup.log"
  local endpoint=http://127.0.0.1:$rgw_port
  wait_for "radosgw on $endpoint" curl -sf "$endpoint"
  radosgw-admin -c "$conf" user create --uid=stepwise-test --display-name="Stepwise tests" \
    --access-key="$ACCESS_KEY" --secret-key="$SECRET_KEY" >/dev/null
  # SigV4 needs the payload hash in a header, which curl does not add: this is sha256 of "".
  curl -sSf -X PUT --aws-sigv4 "aws:amz:$REGION:s3" --user "$ACCESS_KEY:$SECRET_KEY" \
    -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
    "$endpoint/$BUCKET" || die "could not create bucket $BUCKET on $endpoint"

  # With STEPWISE_RADOSGW_OWNER_PID, stop the cluster once that process is gone, even if it was
  # killed before it could stop it (the daemons detach, so nothing else would).
  if [[ -n ${STEPWISE_RADOSGW_OWNER_PID:-} ]]; then
    setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 2; done; "$2" stop "$3"' \
      _ "$STEPWISE_RADOSGW_OWNER_PID" "$(readlink -f "$0")" "$dir" </dev/null >/dev/null 2>&1 &
  fi

  cat >"$dir/env" <<EOF
STEPWISE_TEST_S3_ENDPOINT=$endpoint
STEPWISE_TEST_S3_REGION=$REGION
STEPWISE_TEST_S3_BUCKET=$BUCKET
STEPWISE_TEST_S3_ACCESS_KEY_ID=$ACCESS_KEY
STEPWISE_TEST_S3_SECRET_ACCESS_KEY=$SECRET_KEY
EOF
  echo "$dir"
}

env_lines() {
  dir=${1:-${STEPWISE_RADOSGW_DIR:-}}
  [[ -n $dir && -f $dir/env ]] || die "no running cluster in '${dir}' (give its directory)"
  sed 's/^/export /' "$dir/env"
}

stop() {
  dir=${1:-${STEPWISE_RADOSGW_DIR:-}}
  [[ -n $dir && -f $dir/ceph.conf ]] || die "no cluster in '${dir}' (give its directory)"
  local pidfile pid pids=()
  for pidfile in "$dir"/run/*.pid; do
    [[ -f $pidfile ]] || continue
    pid=$(<"$pidfile")
    kill "$pid" 2>/dev/null && pids+=("$pid")
  done
  # Daemons exit within a second or two of SIGTERM; anything still alive after 10 s is killed.
  local deadline=$((SECONDS + 10))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null; do
      if ((SECONDS >= deadline)); then kill -9 "$pid" 2>/dev/null || true; break; fi
      sleep 0.1
    done
  done
  rm -rf "$dir"
}

case ${1:-} in
  start) start "${2:-}" ;;
  env) env_lines "${2:-}" ;;
  stop) stop "${2:-}" ;;
  *) die "usage: $0 start [DIR] | env [DIR] | stop [DIR]" ;;
esac
