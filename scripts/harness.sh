#!/usr/bin/env bash
# Test harness: run COMMAND against a private, throw-away Docker engine.
#
#   scripts/harness.sh COMMAND [ARGS...]
#
# 1. installs what is missing (docker.io, mmdebstrap, zstd, tar, prometheus, docker-compose, age, restic and
#    borgbackup from apt; the project itself with its `test` extra through pip);
# 2. starts a private dockerd (own data-root, exec-root, pidfile and unix
#    socket under a short temp dir; no bridge, no iptables);
# 3. builds the fixture image from a Debian rootfs made by mmdebstrap (cached
#    by content tag, so later runs only `docker import` it) and imports it as
#    dockvault-fixture:<tag> and dockvault-fixture:latest;
# 4. runs COMMAND with DOCKER_HOST, DOCKVAULT_TEST_IMAGE and DOCKVAULT_HARNESS=1
#    exported, and exits with its exit code;
# 5. always stops dockerd (and the containerd/shims it started) and removes the
#    temp dir, also on SIGINT/SIGTERM.
#
# Nothing is pulled from a registry. Developers iterating may set DOCKER_HOST
# (answering) and DOCKVAULT_TEST_IMAGE (present there) to skip steps 2-3.
set -euo pipefail

# Packages added to the minbase fixture image: the one place to extend it.
# zstd: archives; postgresql-15, mariadb-server/-client: database dump tests
# (servers started by tests/dbfixtures.py, nothing starts on its own: the
# image has no CMD and no init); procps: `ps` for argv checks in containers.
FIXTURE_PACKAGES=(zstd postgresql-15 mariadb-server mariadb-client procps)
FIXTURE_SUITE=bookworm
FIXTURE_VARIANT=minbase
FIXTURE_REPO=dockvault-fixture

DOCKERD_READY_TIMEOUT=60   # seconds until `docker version` must answer
DOCKERD_STOP_TIMEOUT=30    # seconds for dockerd to exit after SIGTERM
COMMAND_STOP_TIMEOUT=10    # seconds for COMMAND to exit after a signal

log() { printf 'harness: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [[ $# -lt 1 ]]; then
    echo "usage: $0 COMMAND [ARGS...]" >&2
    exit 2
fi

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE_DIR=${DOCKVAULT_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/dockvault}
T0=$(date +%s)
elapsed() { echo "$(($(date +%s) - T0))s"; }

# CI may run us with stdin closed; give every child a valid fd 0.
if ! { : <&0; } 2>/dev/null; then exec </dev/null; fi

# ---------------------------------------------------------------- cleanup --
TMP=""            # private temp dir (short path: unix socket length limit)
DOCKERD_PID=""
CHILD_PID=""
SIGNAL=""         # INT or TERM once one was received
PARTIAL=""        # rootfs tarball being written
CLEANED=0

alive() {  # pid -> true while the process exists and is not a zombie
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

wait_gone() {  # timeout_seconds pid... -> true when all are gone in time
    local deadline=$(($(date +%s) + $1)) p any
    shift
    while :; do
        any=0
        for p in "$@"; do alive "$p" && any=1; done
        [[ $any == 0 ]] && return 0
        [[ $(date +%s) -ge $deadline ]] && return 1
        sleep 0.2
    done
}

descendants() {  # pid -> pids of all descendants (read from /proc)
    local -A kids=()
    local f s p pp out=() queue=("$1")
    for f in /proc/[0-9]*/stat; do
        s=$(cat "$f" 2>/dev/null) || continue
        p=${s%% *}
        s=${s##*) }; s=${s#* }; pp=${s%% *}
        kids[$pp]+=" $p"
    done
    while [[ ${#queue[@]} -gt 0 ]]; do
        p=${queue[0]}; queue=("${queue[@]:1}")
        for s in ${kids[$p]:-}; do out+=("$s"); queue+=("$s"); done
    done
    echo "${out[@]:-}"
}

procs_in_tmp() {  # pids (not ours) whose command line mentions $TMP/
    local f p cmd
    for f in /proc/[0-9]*/cmdline; do
        p=${f#/proc/}; p=${p%/cmdline}
        [[ $p == "$$" || $p == "${BASHPID:-$$}" ]] && continue
        cmd=$( { tr '\0' ' ' <"$f"; } 2>/dev/null) || continue  # the process may be gone already
        [[ $cmd == *"$TMP/"* ]] && alive "$p" && echo "$p"
    done
    return 0
}

container_procs() {  # pids still in a cgroup of one of our containers
    local d f c id ids=()
    for d in "$TMP"/data/containers/*/; do
        [[ -d $d ]] && ids+=("$(basename "$d")")
    done
    [[ ${#ids[@]} -gt 0 ]] || return 0
    for f in /proc/[0-9]*/cgroup; do
        c=$(cat "$f" 2>/dev/null) || continue
        for id in "${ids[@]}"; do
            if [[ $c == *"$id"* ]]; then
                d=${f#/proc/}; d=${d%/cgroup}
                alive "$d" && echo "$d"
                break
            fi
        done
    done
    return 0
}

stop_command() {  # after a signal: let COMMAND (or the build) end, then make it
    [[ -n $CHILD_PID ]] && alive "$CHILD_PID" || return 0
    local pids
    pids="$CHILD_PID $(descendants "$CHILD_PID")"
    log "stopping command (pid $CHILD_PID)"
    if [[ $SIGNAL == INT ]]; then
        # A terminal's Ctrl-C reached COMMAND too: give it a moment to finish
        # on its own (pytest prints its summary), else pass SIGINT on.
        wait_gone 3 "$CHILD_PID" || kill -INT "$CHILD_PID" 2>/dev/null || true
    else
        kill -TERM "$CHILD_PID" 2>/dev/null || true
    fi
    wait_gone "$COMMAND_STOP_TIMEOUT" "$CHILD_PID" || log "command still running; terminating it"
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    # shellcheck disable=SC2086
    wait_gone 5 $pids || kill -KILL $pids 2>/dev/null || true
}

stop_dockerd() {
    local pid=$DOCKERD_PID sock="unix://$TMP/docker.sock" left
    [[ -s $TMP/pid ]] && pid=$(cat "$TMP/pid")
    if [[ -n $pid ]] && alive "$pid"; then
        # Remove containers first so dockerd's own shutdown is quick.
        local ids
        ids=$(timeout 10 docker -H "$sock" ps -aq 2>/dev/null || true)
        if [[ -n $ids ]]; then
            # shellcheck disable=SC2086
            timeout 30 docker -H "$sock" rm -f $ids >/dev/null 2>&1 || true
        fi
        kill -TERM "$pid" 2>/dev/null || true
        if ! wait_gone "$DOCKERD_STOP_TIMEOUT" "$pid"; then
            log "dockerd did not stop in ${DOCKERD_STOP_TIMEOUT}s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
            wait_gone 5 "$pid" || true
        fi
    fi
    # Only if dockerd died without cleaning up: container processes (found by
    # their cgroup), then containerd and its shims, which run in sessions of
    # their own (found by the temp dir on their command line).
    left=$(container_procs)
    if [[ -n $left ]]; then
        log "killing leftover container processes: ${left//$'\n'/ }"
        # shellcheck disable=SC2086
        kill -KILL $left 2>/dev/null || true
        # shellcheck disable=SC2086
        wait_gone 5 $left || true
    fi
    left=$(procs_in_tmp)
    if [[ -n $left ]]; then
        log "stopping leftover processes: ${left//$'\n'/ }"
        # shellcheck disable=SC2086
        kill -TERM $left 2>/dev/null || true
        # shellcheck disable=SC2086
        wait_gone 10 $left || kill -KILL $left 2>/dev/null || true
        # shellcheck disable=SC2086
        wait_gone 5 $left || log "WARNING: still running: ${left//$'\n'/ }"
    fi
}

remove_tmp() {
    local mnts m
    # Unmount leftovers (overlay, netns, mmdebstrap binds), deepest first.
    mnts=$(awk -v d="$TMP/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
    for m in $mnts; do umount -l "$m" 2>/dev/null || log "WARNING: cannot unmount $m"; done
    rm -rf --one-file-system "$TMP" 2>/dev/null || rm -rf --one-file-system "$TMP" \
        || log "WARNING: could not remove $TMP"
}

cleanup() {
    local rc=$?
    [[ $CLEANED == 1 ]] && return
    CLEANED=1
    trap '' INT TERM
    set +e
    stop_command
    [[ -n $PARTIAL ]] && rm -f "$PARTIAL"
    if [[ -n $TMP && -d $TMP ]]; then
        log "stopping dockerd"
        stop_dockerd
        remove_tmp
    fi
    log "done in $(elapsed), exit code $rc"
    exit "$rc"
}
trap cleanup EXIT
trap 'SIGNAL=INT; log "interrupted (SIGINT)"; exit 130' INT
trap 'SIGNAL=TERM; log "terminated (SIGTERM)"; exit 143' TERM

# ---------------------------------------------------------------- install --
install_apt() {
    local need=()
    { command -v dockerd && command -v docker; } >/dev/null 2>&1 || need+=(docker.io)
    command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
    command -v zstd >/dev/null 2>&1 || need+=(zstd)
    command -v tar >/dev/null 2>&1 || need+=(tar)
    # prometheus and promtool: the metrics, alert-rule and dashboard tests run against the real thing.
    { command -v prometheus && command -v promtool; } >/dev/null 2>&1 || need+=(prometheus)
    # docker-compose (v1, Debian's): tests/e2e/test_compose.py runs examples/compose with it.
    command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
    # age: encrypted artifacts are checked by hand the way the README shows (age -d -i key.txt).
    command -v age >/dev/null 2>&1 || need+=(age)
    # restic and borg: the benchmark peers of benchmarks/volume_backup.py and benchmarks/differential.py.
    command -v restic >/dev/null 2>&1 || need+=(restic)
    command -v borg >/dev/null 2>&1 || need+=(borgbackup)
    [[ ${#need[@]} -eq 0 ]] && return 0
    [[ $(id -u) == 0 ]] || die "missing packages: ${need[*]} (run as root, or install them)"
    log "installing ${need[*]} (apt)"
    export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
    # Keep package scripts from starting a system docker daemon.
    local policy=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
    fi
    local ok=0
    apt-get update -qq </dev/null >/dev/null \
        && apt-get install -y -qq "${need[@]}" </dev/null >/dev/null && ok=1
    [[ -n $policy ]] && rm -f "$policy"
    [[ $ok == 1 ]] || die "apt-get install ${need[*]} failed"
}

install_project() {
    local want stamp
    want=$( { sha256sum <"$REPO_ROOT/pyproject.toml"; echo "$REPO_ROOT"; command -v python3; } | sha256sum)
    want=${want%% *}
    stamp="$CACHE_DIR/pip-$(printf '%s' "$REPO_ROOT" | sha256sum | cut -c1-16).stamp"
    # Skip only when the import works from THIS checkout and pyproject is as
    # installed last time; otherwise install.
    if [[ -f $stamp && $(cat "$stamp") == "$want" ]] \
        && python3 -c '
import sys, dockvault, pytest, hypothesis
sys.exit(0 if dockvault.__file__.startswith(sys.argv[1]) else 1)' \
            "$REPO_ROOT/operator/" >/dev/null 2>&1; then
        return 0
    fi
    log "installing project: pip install -e '.[test]'"
    (cd "$REPO_ROOT" && PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
        python3 -m pip install -q -e '.[test]' </dev/null) || die "pip install failed"
    echo "$want" >"$stamp"
}

mkdir -p "$CACHE_DIR"
install_apt
install_project

# ----------------------------------------------------------------- docker --
run_command() {
    export DOCKVAULT_HARNESS=1
    log "running: $*"
    # In the background so that signals reach our traps at once. The explicit
    # <&0 keeps the caller's stdin (bash would give /dev/null otherwise), and
    # env restores SIGINT/SIGQUIT, which bash ignores in background commands,
    # so a terminal's Ctrl-C still reaches COMMAND (e.g. pytest's summary).
    env --default-signal=INT,QUIT "$@" <&0 &
    CHILD_PID=$!
    local rc=0
    wait "$CHILD_PID" || rc=$?
    CHILD_PID=""
    exit "$rc"
}

unset DOCKER_CONTEXT DOCKER_TLS_VERIFY DOCKER_CERT_PATH
if [[ -n ${DOCKER_HOST:-} && -n ${DOCKVAULT_TEST_IMAGE:-} ]] \
    && timeout 10 docker version >/dev/null 2>&1 \
    && timeout 10 docker image inspect "$DOCKVAULT_TEST_IMAGE" >/dev/null 2>&1; then
    log "reusing DOCKER_HOST=$DOCKER_HOST and DOCKVAULT_TEST_IMAGE=$DOCKVAULT_TEST_IMAGE"
    run_command "$@"
fi

TMP=$(mktemp -d /tmp/dvd.XXXX)
export DOCKER_HOST="unix://$TMP/docker.sock"
log "starting private dockerd in $TMP"
# setsid: its own session, so a terminal's Ctrl-C reaches only us and we
# shut it down in order.
setsid dockerd \
    --data-root "$TMP/data" --exec-root "$TMP/exec" --pidfile "$TMP/pid" \
    -H "$DOCKER_HOST" --bridge=none --iptables=false --ip6tables=false \
    </dev/null >"$TMP/dockerd.log" 2>&1 &
DOCKERD_PID=$!

deadline=$(($(date +%s) + DOCKERD_READY_TIMEOUT))
until timeout 5 docker version >/dev/null 2>&1; do
    if ! alive "$DOCKERD_PID"; then
        tail -n 30 "$TMP/dockerd.log" >&2 || true
        die "dockerd exited during start-up"
    fi
    if [[ $(date +%s) -ge $deadline ]]; then
        tail -n 30 "$TMP/dockerd.log" >&2 || true
        die "dockerd did not answer within ${DOCKERD_READY_TIMEOUT}s"
    fi
    sleep 0.5
done
log "dockerd ready ($(docker version -f '{{.Server.Version}}' 2>/dev/null || echo '?')) after $(elapsed)"

# ---------------------------------------------------------------- fixture --
# The rootfs tarball's recipe; its text is part of the content tag, so any
# change here (or to FIXTURE_PACKAGES) gives a new tag and a rebuild.
build_rootfs() {  # out_file
    local include
    include=$(IFS=,; echo "${FIXTURE_PACKAGES[*]}")
    # No mirror argument and stdin from /dev/null: the host's apt sources.
    # The hook drops the database instances the postinst scripts create (a
    # PostgreSQL "main" cluster, a MariaDB datadir whose root logs in by
    # unix_socket): ~150 MB, and Docker would copy them into any empty named
    # volume mounted on /var/lib/mysql, so a "fresh" volume would not be.
    TMPDIR="$TMP" mmdebstrap --quiet --variant="$FIXTURE_VARIANT" --include="$include" \
        --customize-hook='rm -rf "$1"/etc/postgresql/*/main "$1"/var/lib/postgresql/*/main "$1"/var/lib/mysql/*' \
        "$FIXTURE_SUITE" - </dev/null | zstd -q -T0 -3 -o "$1"
}

fixture_tag() {
    {
        printf '%s\n' "$FIXTURE_SUITE" "$FIXTURE_VARIANT"
        printf '%s\n' "${FIXTURE_PACKAGES[@]}" | LC_ALL=C sort -u
        declare -f build_rootfs
    } | sha256sum | cut -c1-12
}

TAG=$(fixture_tag)
IMAGE="$FIXTURE_REPO:$TAG"
ROOTFS="$CACHE_DIR/rootfs-$TAG.tar.zst"
if [[ ! -s $ROOTFS ]]; then
    exec 9>"$CACHE_DIR/rootfs.lock"
    flock -w 1800 9 || die "timed out waiting for $CACHE_DIR/rootfs.lock"
    if [[ ! -s $ROOTFS ]]; then
        log "building fixture rootfs $TAG (${FIXTURE_PACKAGES[*]}) with mmdebstrap"
        t=$(date +%s)
        PARTIAL="$ROOTFS.tmp.$$"
        build_rootfs "$PARTIAL" &   # in the background: see run_command
        CHILD_PID=$!
        wait "$CHILD_PID" || die "mmdebstrap failed"
        CHILD_PID=""
        mv -f "$PARTIAL" "$ROOTFS"
        PARTIAL=""
        log "rootfs built in $(($(date +%s) - t))s: $ROOTFS ($(du -h "$ROOTFS" | cut -f1))"
    fi
    exec 9>&-
else
    log "using cached rootfs $ROOTFS"
fi
t=$(date +%s)
zstd -q -dc "$ROOTFS" | docker import - "$IMAGE" >/dev/null || die "docker import failed"
docker tag "$IMAGE" "$FIXTURE_REPO:latest"
log "imported $IMAGE in $(($(date +%s) - t))s"

export DOCKVAULT_TEST_IMAGE="$IMAGE"
run_command "$@"
