#!/usr/bin/env bash
# The README's demo: back up a volume from the example policy, destroy it, restore it from the
# example RestoreRequest, and prove the data came back. Run through the harness: `make demo`.
set -euo pipefail
: "${DOCKER_HOST:?run me through scripts/harness.sh (make demo)}"
: "${DOCKVAULT_TEST_IMAGE:?run me through scripts/harness.sh (make demo)}"

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d /tmp/dockvault-demo.XXXX)
VOLUME=dockvault-demo-data
APP=dockvault-demo-app
IMAGE=$DOCKVAULT_TEST_IMAGE
export DOCKVAULT_CONFIG_DIR=$WORK/config DOCKVAULT_STATE_DIR=$WORK/state DOCKVAULT_HELPER_IMAGE=$IMAGE

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
cleanup() {
    docker rm -f "$APP" >/dev/null 2>&1 || true
    docker volume rm -f "$VOLUME" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
checksums() {
    docker run --rm --network none -v "$VOLUME":/data:ro "$IMAGE" \
        sh -c 'cd /data && find . -xdev \( -type f -o -type l -o -type d \) -printf "%p %m %U:%G %l\n" | sort && find . -type f -exec sha256sum {} + | sort -k2'
}

step "Create volume $VOLUME with some data, used by a running app container"
cleanup; mkdir -p "$WORK/config" "$WORK/repo"
docker volume create "$VOLUME" >/dev/null
docker run --rm --network none -v "$VOLUME":/data "$IMAGE" sh -c '
    mkdir -p /data/uploads/2026/11 /data/db /data/empty
    echo "Important data" > /data/file1.txt
    for i in $(seq 1 200); do echo "photo $i $(date +%N)" > /data/uploads/2026/11/photo-$i.jpg; done
    head -c 5000000 /dev/urandom > /data/db/blob.bin
    ln -s uploads/2026 /data/latest
    chmod 600 /data/file1.txt; chown 1000:1000 /data/uploads'
docker run -d --name "$APP" --network none -v "$VOLUME":/data "$IMAGE" \
    sh -c 'trap "exit 0" TERM; while true; do sleep 1; done' >/dev/null
checksums > "$WORK/before.txt"
echo "$(grep -c . "$WORK/before.txt") entries recorded"

step "Policy and restore request from examples/standalone (repository moved to $WORK/repo)"
sed "s|/var/backups/dockvault|$WORK/repo|" "$REPO_ROOT/examples/standalone/policy.yaml" > "$WORK/config/policy.yaml"
dockvault validate "$WORK/config"

step "dockvault backup demo  (quiesce: stop stops $APP during the archive and starts it again)"
dockvault backup demo
docker inspect -f "$APP is {{.State.Status}}" "$APP"
dockvault get backups

step "Disaster: remove the app and the volume"
docker rm -f "$APP" >/dev/null
docker volume rm "$VOLUME"

step "Apply the RestoreRequest and reconcile once"
cp "$REPO_ROOT/examples/standalone/restore.yaml" "$WORK/config/restore.yaml"
dockvault run --once

step "Verify: every path, mode, owner, link and checksum matches"
checksums > "$WORK/after.txt"
if diff -u "$WORK/before.txt" "$WORK/after.txt"; then
    echo "OK: restored volume is identical ($(grep -c . "$WORK/after.txt") entries)"
else
    echo "FAILED: restored volume differs" >&2
    exit 1
fi

step "Restore drill: restore the newest backup into a scratch volume, compare every path, measure the RTO"
dockvault drill demo

step "Status"
dockvault get policies
dockvault get backups
dockvault get restores

step "Metrics (dockvault run serves them for Prometheus; here for a moment on 127.0.0.1)"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
dockvault run --metrics-addr "127.0.0.1:$port" 2>"$WORK/run.log" &
run_pid=$!
for _ in $(seq 1 50); do
    python3 - "$port" <<'PY' && break
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    sys.exit(0 if opener.open(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=1).status == 200 else 1)
except OSError:
    sys.exit(1)
PY
    sleep 0.2
done
python3 - "$port" <<'PY'
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
text = opener.open(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
wanted = ("dockvault_rpo_age_seconds", "dockvault_rpo_target_seconds", "dockvault_rto_seconds", "dockvault_rto_target_seconds",
          "dockvault_backup_last_success_timestamp_seconds", "dockvault_repository_backups")
print("\n".join(line for line in text.splitlines() if line.startswith(wanted)))
PY
kill "$run_pid"; wait "$run_pid" || true

step "The same artifact restores by hand with standard tools"
artifact=$(ls "$WORK"/repo/demo/*/media.tar.zst)
echo "zstd -d < $artifact | tar -x --numeric-owner -C DIR"
zstd -d -q "$artifact" -o "$WORK/media.tar"   # (tar stops reading at the end marker, before the record padding)
tar -t -f "$WORK/media.tar" > "$WORK/members.txt"
head -5 "$WORK/members.txt"; echo "... $(grep -c . "$WORK/members.txt") members"
