#!/usr/bin/env bash
# Make PostgreSQL and Redis available for the hybridstore test suite.
#
# Works on this machine or on a fresh Debian 12 machine where we are root.
# Idempotent: services that already answer are used as they are; only what is
# missing is installed, configured or started.  Never prompts.
#
# Usage:  eval "$(tools/services.sh)"
#
# Only two lines go to stdout (DATABASE_URL=... and REDIS_URL=...); all
# progress messages and tool output go to stderr.
#
# Overrides (defaults in brackets):
#   HYBRIDSTORE_TEST_PG_HOST [127.0.0.1]     HYBRIDSTORE_TEST_PG_PORT [5432]
#   HYBRIDSTORE_TEST_REDIS_HOST [127.0.0.1]  HYBRIDSTORE_TEST_REDIS_PORT [6379]
set -euo pipefail

# Keep stdout for the final two lines only; everything else goes to stderr.
exec 3>&1 1>&2

PG_HOST=${HYBRIDSTORE_TEST_PG_HOST:-127.0.0.1}
PG_PORT=${HYBRIDSTORE_TEST_PG_PORT:-5432}
REDIS_HOST=${HYBRIDSTORE_TEST_REDIS_HOST:-127.0.0.1}
REDIS_PORT=${HYBRIDSTORE_TEST_REDIS_PORT:-6379}
WAIT_SECS=60
PG_SOCKET_DIR=/var/run/postgresql

export DEBIAN_FRONTEND=noninteractive

log() { printf 'services.sh: %s\n' "$*" >&2; }
die() { printf 'services.sh: ERROR: %s\n' "$*" >&2; exit 1; }

for p in "$PG_PORT" "$REDIS_PORT"; do
    [[ $p =~ ^[0-9]+$ ]] || die "invalid port '$p'"
done

is_loopback() {
    case $1 in
        127.0.0.1 | localhost | ::1) return 0 ;;
        *) return 1 ;;
    esac
}

# Host part of a URL (IPv6 literals need brackets).
url_host() {
    if [[ $1 == *:* ]]; then printf '[%s]' "$1"; else printf '%s' "$1"; fi
}

tcp_probe() {
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

pg_answers() {
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 3 >/dev/null 2>&1
    else
        tcp_probe "$PG_HOST" "$PG_PORT"
    fi
}

redis_answers() {
    if command -v redis-cli >/dev/null 2>&1; then
        local out
        out=$(timeout 5 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null) || return 1
        [[ $out == PONG ]]
    else
        tcp_probe "$REDIS_HOST" "$REDIS_PORT"
    fi
}

# wait_for NAME CHECK_FUNCTION: poll for up to WAIT_SECS seconds.
wait_for() {
    local name=$1 check=$2 deadline=$((SECONDS + WAIT_SECS))
    while ! "$check"; do
        if ((SECONDS >= deadline)); then
            return 1
        fi
        sleep 1
    done
    log "$name is answering"
}

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install $* manually"
    if ((APT_UPDATED == 0)); then
        log "apt-get update"
        apt-get -o DPkg::Lock::Timeout=120 update -q </dev/null
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    # C.UTF-8 so that a cluster created by the postgresql postinst is UTF8.
    LANG=C.UTF-8 LC_ALL=C.UTF-8 apt-get -o DPkg::Lock::Timeout=120 install -y -q \
        --no-install-recommends "$@" </dev/null
}

# ---------------------------------------------------------------- PostgreSQL

pg_server_installed() {
    command -v pg_ctlcluster >/dev/null 2>&1 || return 1
    compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null
}

# Newest version with a config under /etc/postgresql, else newest installed server.
pg_version() {
    local v
    v=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1 || true)
    if [[ -z $v || ! -x /usr/lib/postgresql/$v/bin/postgres ]]; then
        v=$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -1 || true)
    fi
    [[ -n $v && -x /usr/lib/postgresql/$v/bin/postgres ]] || die "no PostgreSQL server binary found"
    printf '%s' "$v"
}

# Run one SQL command as the postgres OS user (peer auth over the local
# socket, falling back to TCP on 127.0.0.1 which has trust auth by now).
pg_sql() {
    local sql=$1 target
    for target in "$PG_SOCKET_DIR" 127.0.0.1; do
        if command -v runuser >/dev/null 2>&1; then
            (cd / && runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 \
                -h "$target" -p "$PG_PORT" -U postgres -d postgres -tAc "$sql" </dev/null) && return 0
        else
            (cd / && su postgres -s /bin/bash -c "psql -X -q -v ON_ERROR_STOP=1 \
                -h $(printf %q "$target") -p $PG_PORT -U postgres -d postgres \
                -tAc $(printf %q "$sql") </dev/null") && return 0
        fi
    done
    return 1
}

start_postgres() {
    is_loopback "$PG_HOST" ||
        die "PostgreSQL does not answer on $PG_HOST:$PG_PORT and that is not a loopback address; start it yourself"

    if ! pg_server_installed; then
        apt_install postgresql postgresql-client
        if pg_answers; then
            log "PostgreSQL answers after installation"
        fi
    fi

    local ver dir
    ver=$(pg_version)
    dir=/etc/postgresql/$ver/main
    if [[ ! -f $dir/postgresql.conf ]]; then
        log "creating PostgreSQL $ver cluster 'main' on port $PG_PORT"
        pg_createcluster --locale=C.UTF-8 -p "$PG_PORT" "$ver" main
    fi

    # Listen on loopback at the wanted port (a conf.d snippet wins over
    # postgresql.conf because include_dir comes last in Debian's file).
    local conf_changed=0 hba_changed=0 extra_opts=()
    local snippet="# Written by hybridstore tools/services.sh
listen_addresses = '127.0.0.1,::1'
port = $PG_PORT"
    if grep -Eq "^[[:space:]]*include_dir[[:space:]]*=?[[:space:]]*'conf\.d'" "$dir/postgresql.conf"; then
        mkdir -p "$dir/conf.d"
        local f=$dir/conf.d/zz-hybridstore-ci.conf
        if [[ ! -f $f ]] || [[ $(cat "$f") != "$snippet" ]]; then
            log "writing $f"
            printf '%s\n' "$snippet" >"$f"
            chown postgres:postgres "$f" 2>/dev/null || true
            conf_changed=1
        fi
    else
        extra_opts=(-- -o "-c listen_addresses=127.0.0.1,::1 -c port=$PG_PORT")
    fi

    # Trust auth for TCP from loopback; prepend since the first match wins.
    local hba=$dir/pg_hba.conf add=""
    [[ -f $hba ]] || die "$hba not found"
    if ! grep -Eq '^[[:space:]]*host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
        add+=$'host    all    all    127.0.0.1/32    trust\n'
    fi
    if ! grep -Eq '^[[:space:]]*host[[:space:]]+all[[:space:]]+all[[:space:]]+::1/128[[:space:]]+trust' "$hba"; then
        add+=$'host    all    all    ::1/128         trust\n'
    fi
    if [[ -n $add ]]; then
        log "adding loopback trust lines to $hba"
        local tmp
        tmp=$(mktemp)
        { printf '# Added by hybridstore tools/services.sh (test-only trust auth)\n%s\n' "$add"; cat "$hba"; } >"$tmp"
        cat "$tmp" >"$hba" # keeps owner and mode of $hba
        rm -f "$tmp"
        hba_changed=1
    fi

    install -d -o postgres -g postgres -m 2775 "$PG_SOCKET_DIR"

    if pg_ctlcluster --skip-systemctl-redirect "$ver" main status >/dev/null 2>&1; then
        if ((conf_changed)); then
            log "restarting PostgreSQL $ver/main"
            pg_ctlcluster --skip-systemctl-redirect "$ver" main restart "${extra_opts[@]}"
        elif ((hba_changed)); then
            log "reloading PostgreSQL $ver/main"
            pg_ctlcluster --skip-systemctl-redirect "$ver" main reload
        fi
    else
        log "starting PostgreSQL $ver/main"
        pg_ctlcluster --skip-systemctl-redirect "$ver" main start "${extra_opts[@]}" ||
            log "pg_ctlcluster start failed (will still wait)"
    fi

    if ! wait_for PostgreSQL pg_answers; then
        tail -n 20 "/var/log/postgresql/postgresql-$ver-main.log" 2>/dev/null || true
        die "PostgreSQL did not answer on $PG_HOST:$PG_PORT within ${WAIT_SECS}s"
    fi

    # Database `test`, superuser roles `root` and `postgres`.
    local role super
    for role in root postgres; do
        super=$(pg_sql "SELECT rolsuper FROM pg_roles WHERE rolname = '$role'") ||
            die "cannot query roles as the postgres user"
        if [[ -z $super ]]; then
            log "creating superuser role $role"
            pg_sql "CREATE ROLE \"$role\" WITH SUPERUSER LOGIN" >/dev/null || die "cannot create role $role"
        elif [[ $super != t ]]; then
            log "making role $role a superuser"
            pg_sql "ALTER ROLE \"$role\" WITH SUPERUSER LOGIN" >/dev/null || die "cannot alter role $role"
        fi
    done
    if [[ -z $(pg_sql "SELECT 1 FROM pg_database WHERE datname = 'test'") ]]; then
        log "creating database test"
        pg_sql "CREATE DATABASE test TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8'" >/dev/null ||
            pg_sql "CREATE DATABASE test" >/dev/null ||
            die "cannot create database test"
    fi
}

# --------------------------------------------------------------------- Redis

start_redis() {
    is_loopback "$REDIS_HOST" ||
        die "Redis does not answer on $REDIS_HOST:$REDIS_PORT and that is not a loopback address; start it yourself"

    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        apt_install redis-server redis-tools
        # The package may have started its own instance.
        if redis_answers; then
            log "Redis is answering after installation"
            return 0
        fi
    fi

    local dir=/var/lib/redis logdir=/var/log/redis logfile
    if ! mkdir -p "$dir" 2>/dev/null || [[ ! -w $dir ]]; then
        dir=/tmp
    fi
    if mkdir -p "$logdir" 2>/dev/null && [[ -w $logdir ]]; then
        logfile=$logdir/ci.log
    else
        logfile=/tmp/hybridstore-redis-ci.log
    fi

    log "starting redis-server on port $REDIS_PORT (dir $dir, log $logfile)"
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" \
        --save "" --appendonly no --dir "$dir" --logfile "$logfile" </dev/null ||
        log "redis-server failed to start (will still wait)"

    if ! wait_for Redis redis_answers; then
        tail -n 20 "$logfile" 2>/dev/null || true
        die "Redis did not answer on $REDIS_HOST:$REDIS_PORT within ${WAIT_SECS}s"
    fi
}

# ---------------------------------------------------------------------- main

if pg_answers; then
    log "PostgreSQL already answers on $PG_HOST:$PG_PORT; using it as is"
else
    log "PostgreSQL does not answer on $PG_HOST:$PG_PORT"
    start_postgres
fi

if redis_answers; then
    log "Redis already answers on $REDIS_HOST:$REDIS_PORT; using it as is"
else
    log "Redis does not answer on $REDIS_HOST:$REDIS_PORT"
    start_redis
fi

printf 'DATABASE_URL=postgres://postgres@%s:%s/test\n' "$(url_host "$PG_HOST")" "$PG_PORT" >&3
printf 'REDIS_URL=redis://%s:%s\n' "$(url_host "$REDIS_HOST")" "$REDIS_PORT" >&3
