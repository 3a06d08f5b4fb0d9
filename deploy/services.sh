#!/usr/bin/env bash
# The real services on one machine, for development, CI and the integration tests:
# PostgreSQL, Redis and Apache Kafka (KRaft, single node), all on 127.0.0.1.
#
#   bash deploy/services.sh install [NAME...]   install what is missing (apt, Maven for the Kafka jars)
#   bash deploy/services.sh start   [NAME...]   start (idempotent: quick when already running)
#   bash deploy/services.sh stop    [NAME...]   SIGTERM, wait, clean up
#   bash deploy/services.sh restart [NAME...]   stop + start (data is kept)
#   bash deploy/services.sh status  [NAME...]   one line per service
#   bash deploy/services.sh env     [NAME...]   `export LINEINSPECT_TEST_*_URL=...` lines for eval
#
# NAME is postgres, redis or kafka (none = all three; `install` with no names also installs
# Chromium for the browser tests, or name `chromium`). Environment:
#   LINEINSPECT_CACHE         cache root (default ~/.cache/lineinspect): Kafka jars, service state
#   LINEINSPECT_SERVICES_DIR  service state, logs, pid files (default $LINEINSPECT_CACHE/services)
#   LINEINSPECT_PG_DIR        PostgreSQL data folder (default /var/tmp/lineinspect-pg-<uid>-<port>:
#                             when run as root the cluster runs as the `postgres` user, who cannot
#                             enter /root)
#   LINEINSPECT_PG_PORT (25432), LINEINSPECT_REDIS_PORT (26379), LINEINSPECT_KAFKA_PORT (29092;
#   the KRaft controller listens on the next port), LINEINSPECT_KAFKA_HEAP (512m),
#   LINEINSPECT_SERVICE_TIMEOUT (60 s to wait for a service to come up).
# These are throwaway development services: PostgreSQL trusts local connections, nothing is
# authenticated. See deploy/README.md and deploy/compose/ for a real deployment.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${LINEINSPECT_CACHE:-$HOME/.cache/lineinspect}"
SVC="${LINEINSPECT_SERVICES_DIR:-$CACHE/services}"
# Defaults sit below 32768, outside Linux's ephemeral port range (32768-60999): a port in that range can be
# held for a minute by any finished outgoing connection (TIME_WAIT) and a server then fails to bind it.
PG_PORT="${LINEINSPECT_PG_PORT:-25432}"
REDIS_PORT="${LINEINSPECT_REDIS_PORT:-26379}"
KAFKA_PORT="${LINEINSPECT_KAFKA_PORT:-29092}"
KAFKA_CTRL_PORT=$((KAFKA_PORT + 1))
KAFKA_HEAP="${LINEINSPECT_KAFKA_HEAP:-512m}"
TIMEOUT="${LINEINSPECT_SERVICE_TIMEOUT:-60}"
PG_DIR="${LINEINSPECT_PG_DIR:-/var/tmp/lineinspect-pg-$(id -u)-$PG_PORT}"
# Broker/topic limit = the 8 MiB frame limit (Settings.max_message_bytes) + 64 KiB of batch framing.
KAFKA_MAX_BYTES=$((8 * 1024 * 1024 + 64 * 1024))
KAFKA_POM="$HERE/kafka/pom.xml"
KAFKA_LIBS="$CACHE/kafka-libs-$(sha256sum "$KAFKA_POM" | cut -c1-12)"
KAFKA_DIR="$SVC/kafka-$KAFKA_PORT"
REDIS_DIR="$SVC/redis-$REDIS_PORT"
ALL=(postgres redis kafka)

say() { echo "services: $*" >&2; }
die() { echo "services: error: $*" >&2; exit 1; }

# --- helpers ---------------------------------------------------------------------------------
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

read_pid() { [ -f "$1" ] && head -n1 "$1" | tr -dc '0-9' || true; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo -n "$@"
  else die "need root (or sudo) to run: $*"; fi
}

pg_bin() {
  local d
  if command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/initdb" ]; then pg_config --bindir; return; fi
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
  [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}

# Run a PostgreSQL command as the cluster owner (PostgreSQL refuses to run as root).
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND... -> 0 when COMMAND succeeds in time
  local secs="$1" what="$2"; shift 2
  local end=$((SECONDS + secs))
  while [ "$SECONDS" -lt "$end" ]; do
    if "$@"; then return 0; fi
    sleep 0.2
  done
  say "$what did not come up within ${secs}s"
  return 1
}

with_lock() {  # serialize start/stop of one service between concurrent callers (daemons get `9>&-`)
  local name="$1"; shift
  mkdir -p "$SVC"
  (
    exec 9>"$SVC/.lock-$name"
    flock -w 90 9 || die "timed out waiting for another services.sh working on $name"
    "$@"
  )
}

names_or_all() { if [ "$#" -eq 0 ]; then echo "${ALL[@]}"; else echo "$@"; fi; }

check_name() {
  case "$1" in postgres|redis|kafka) ;; chromium) [ "$2" = install ] || die "chromium is only for install" ;;
    *) die "unknown service '$1' (postgres, redis, kafka)";; esac
}

# --- install -----------------------------------------------------------------------------------
install_packages() {
  local want=() n
  for n in "$@"; do
    case "$n" in
      postgres) [ -n "$(pg_bin)" ] || want+=(postgresql) ;;
      redis) command -v redis-server >/dev/null || want+=(redis-server) ;;
      kafka)
        command -v java >/dev/null || want+=(default-jre-headless)
        [ -d "$KAFKA_LIBS" ] && [ -f "$KAFKA_LIBS/.complete" ] || command -v mvn >/dev/null || want+=(maven) ;;
      chromium) command -v chromium >/dev/null || want+=(chromium) ;;
    esac
  done
  if [ "${#want[@]}" -gt 0 ]; then
    say "installing ${want[*]} (apt-get)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
  fi
}

install_kafka_libs() {
  [ -f "$KAFKA_LIBS/.complete" ] && return 0
  mkdir -p "$CACHE"
  (
    exec 9>"$CACHE/.lock-kafka-libs"; flock -w 600 9 || die "timed out waiting for the Kafka jar lock"
    [ -f "$KAFKA_LIBS/.complete" ] && exit 0
    local work; work="$(mktemp -d "$CACHE/.kafka-build.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    cp "$KAFKA_POM" "$work/pom.xml"
    say "resolving the Kafka broker jars with Maven into $KAFKA_LIBS"
    ( cd "$work" && mvn -B -q dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$work/libs" ) \
      || die "Maven could not resolve $KAFKA_POM (is Maven Central reachable?)"
    ls "$work"/libs/kafka_2.13-*.jar >/dev/null 2>&1 || die "Maven finished but no kafka_2.13 jar in $work/libs"
    rm -rf "$KAFKA_LIBS"
    mv "$work/libs" "$KAFKA_LIBS"
    touch "$KAFKA_LIBS/.complete"
  )
}

cmd_install() {
  local names=("$@")
  [ "${#names[@]}" -gt 0 ] || names=("${ALL[@]}" chromium)
  install_packages "${names[@]}"
  local n
  for n in "${names[@]}"; do [ "$n" = kafka ] && install_kafka_libs; done
  say "installed: ${names[*]}"
}

# --- PostgreSQL ------------------------------------------------------------------------------
pg_status() {
  local pid; pid="$(read_pid "$PG_DIR/data/postmaster.pid")"
  if pid_alive "$pid" && port_open "$PG_PORT"; then echo "postgres running pid=$pid port=$PG_PORT data=$PG_DIR/data"; return 0; fi
  echo "postgres stopped port=$PG_PORT"; return 1
}

pg_start() {
  pg_status >/dev/null && { say "postgres already running on $PG_PORT"; return 0; }
  port_open "$PG_PORT" && die "port $PG_PORT is taken by another process (set LINEINSPECT_PG_PORT)"
  local bin; bin="$(pg_bin)"; [ -n "$bin" ] || die "PostgreSQL is not installed: bash deploy/services.sh install postgres"
  mkdir -p "$PG_DIR"
  [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$PG_DIR"
  chmod 700 "$PG_DIR"
  if [ ! -f "$PG_DIR/data/PG_VERSION" ]; then
    say "initialising a PostgreSQL cluster in $PG_DIR/data"
    as_pg rm -rf "$PG_DIR/data"
    as_pg "$bin/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$PG_DIR/initdb.log" 2>&1 \
      || { tail -n 20 "$PG_DIR/initdb.log" >&2; die "initdb failed"; }
  fi
  rm -f "$PG_DIR/data/postmaster.pid"  # stale after a crash; the process is not running (checked above)
  if ! as_pg "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w -t "$TIMEOUT" \
      -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DIR -c fsync=off -c max_connections=200" start >/dev/null 9>&-; then
    tail -n 30 "$PG_DIR/postgres.log" >&2 || true
    die "PostgreSQL did not start (log: $PG_DIR/postgres.log)"
  fi
  wait_for "$TIMEOUT" postgres port_open "$PG_PORT" || die "PostgreSQL is not answering on $PG_PORT"
  say "postgres started on 127.0.0.1:$PG_PORT"
}

pg_stop() {
  local bin pid; bin="$(pg_bin)"; pid="$(read_pid "$PG_DIR/data/postmaster.pid")"
  if ! pid_alive "$pid"; then say "postgres not running"; return 0; fi
  as_pg "$bin/pg_ctl" -D "$PG_DIR/data" -m fast -w -t "$TIMEOUT" stop >/dev/null || kill -TERM "$pid" 2>/dev/null || true
  say "postgres stopped"
}

# --- Redis ---------------------------------------------------------------------------------------
redis_status() {
  local pid; pid="$(read_pid "$REDIS_DIR/redis.pid")"
  if pid_alive "$pid" && port_open "$REDIS_PORT"; then echo "redis running pid=$pid port=$REDIS_PORT"; return 0; fi
  echo "redis stopped port=$REDIS_PORT"; return 1
}

redis_start() {
  redis_status >/dev/null && { say "redis already running on $REDIS_PORT"; return 0; }
  port_open "$REDIS_PORT" && die "port $REDIS_PORT is taken by another process (set LINEINSPECT_REDIS_PORT)"
  command -v redis-server >/dev/null || die "Redis is not installed: bash deploy/services.sh install redis"
  mkdir -p "$REDIS_DIR"; rm -f "$REDIS_DIR/redis.pid"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --daemonize yes \
    --dir "$REDIS_DIR" --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log" 9>&- \
    || { tail -n 20 "$REDIS_DIR/redis.log" >&2 || true; die "redis-server failed to start"; }
  wait_for "$TIMEOUT" redis redis_status >/dev/null \
    || { tail -n 20 "$REDIS_DIR/redis.log" >&2 || true; die "Redis did not come up (log: $REDIS_DIR/redis.log)"; }
  say "redis started on 127.0.0.1:$REDIS_PORT"
}

redis_stop() {
  local pid; pid="$(read_pid "$REDIS_DIR/redis.pid")"
  if ! pid_alive "$pid"; then say "redis not running"; rm -f "$REDIS_DIR/redis.pid"; return 0; fi
  kill -TERM "$pid"
  wait_for 20 "redis shutdown" bash -c "! kill -0 $pid 2>/dev/null" || kill -KILL "$pid" 2>/dev/null || true
  rm -f "$REDIS_DIR/redis.pid"
  say "redis stopped"
}

# --- Kafka ---------------------------------------------------------------------------------------
kafka_status() {
  local pid; pid="$(read_pid "$KAFKA_DIR/kafka.pid")"
  if pid_alive "$pid" && port_open "$KAFKA_PORT"; then echo "kafka running pid=$pid port=$KAFKA_PORT libs=$KAFKA_LIBS"; return 0; fi
  echo "kafka stopped port=$KAFKA_PORT"; return 1
}

kafka_started() {  # the broker logs this once it serves requests
  grep -q "Kafka Server started" "$KAFKA_DIR/kafka.log" 2>/dev/null && port_open "$KAFKA_PORT"
}

kafka_start() {
  kafka_status >/dev/null && { say "kafka already running on $KAFKA_PORT"; return 0; }
  port_open "$KAFKA_PORT" && die "port $KAFKA_PORT is taken by another process (set LINEINSPECT_KAFKA_PORT)"
  port_open "$KAFKA_CTRL_PORT" && die "port $KAFKA_CTRL_PORT (Kafka controller) is taken by another process"
  command -v java >/dev/null || die "Java is not installed: bash deploy/services.sh install kafka"
  [ -f "$KAFKA_LIBS/.complete" ] || die "Kafka jars are missing in $KAFKA_LIBS: bash deploy/services.sh install kafka"
  mkdir -p "$KAFKA_DIR/data"
  sed -e "s|@PORT@|$KAFKA_PORT|g" -e "s|@CONTROLLER_PORT@|$KAFKA_CTRL_PORT|g" \
      -e "s|@DATA_DIR@|$KAFKA_DIR/data|g" -e "s|@MAX_BYTES@|$KAFKA_MAX_BYTES|g" \
      "$HERE/kafka/server.properties.in" >"$KAFKA_DIR/server.properties"
  local cp="$KAFKA_LIBS/*"
  if [ ! -f "$KAFKA_DIR/data/meta.properties" ]; then
    local id; id="$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)"
    [ -n "$id" ] || die "kafka StorageTool random-uuid failed"
    java -cp "$cp" -Dlog4j2.configurationFile="$HERE/kafka/log4j2.properties" kafka.tools.StorageTool \
      format -t "$id" -c "$KAFKA_DIR/server.properties" >"$KAFKA_DIR/format.log" 2>&1 \
      || { tail -n 20 "$KAFKA_DIR/format.log" >&2; die "formatting the Kafka storage failed"; }
    say "formatted Kafka storage in $KAFKA_DIR/data (cluster $id)"
  fi
  [ -f "$KAFKA_DIR/kafka.log" ] && mv -f "$KAFKA_DIR/kafka.log" "$KAFKA_DIR/kafka.log.1"
  # setsid: the broker outlives this script and does not get the caller's terminal signals.
  setsid nohup java "-Xmx$KAFKA_HEAP" "-Xms$KAFKA_HEAP" -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$HERE/kafka/log4j2.properties" -cp "$cp" \
    kafka.Kafka "$KAFKA_DIR/server.properties" >"$KAFKA_DIR/kafka.log" 2>&1 </dev/null 9>&- &
  echo $! >"$KAFKA_DIR/kafka.pid"
  local pid; pid="$(read_pid "$KAFKA_DIR/kafka.pid")"
  local end=$((SECONDS + TIMEOUT))
  while ! kafka_started; do
    if ! pid_alive "$pid"; then
      tail -n 40 "$KAFKA_DIR/kafka.log" >&2 || true
      die "Kafka exited during start-up (log: $KAFKA_DIR/kafka.log)"
    fi
    if [ "$SECONDS" -ge "$end" ]; then
      tail -n 40 "$KAFKA_DIR/kafka.log" >&2 || true
      kill -TERM "$pid" 2>/dev/null || true
      die "Kafka did not report 'Kafka Server started' within ${TIMEOUT}s (log: $KAFKA_DIR/kafka.log)"
    fi
    sleep 0.3
  done
  say "kafka started on 127.0.0.1:$KAFKA_PORT (controller $KAFKA_CTRL_PORT)"
}

kafka_stop() {
  local pid; pid="$(read_pid "$KAFKA_DIR/kafka.pid")"
  if ! pid_alive "$pid"; then say "kafka not running"; rm -f "$KAFKA_DIR/kafka.pid"; return 0; fi
  kill -TERM "$pid"
  if ! wait_for 30 "kafka shutdown" bash -c "! kill -0 $pid 2>/dev/null"; then
    say "kafka ignored SIGTERM for 30 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$KAFKA_DIR/kafka.pid"
  say "kafka stopped"
}

# --- dispatch ----------------------------------------------------------------------------------
cmd_env() {
  local n
  for n in $(names_or_all "$@"); do
    case "$n" in
      postgres) echo "export LINEINSPECT_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:$PG_PORT/postgres" ;;
      redis) echo "export LINEINSPECT_TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0" ;;
      kafka) echo "export LINEINSPECT_TEST_KAFKA_URL=kafka://127.0.0.1:$KAFKA_PORT" ;;
    esac
  done
}

fn_for() {  # fn_for postgres start -> pg_start
  case "$1" in postgres) echo "pg_$2" ;; *) echo "$1_$2" ;; esac
}

main() {
  local verb="${1:-}"; shift || true
  local n
  for n in "$@"; do check_name "$n" "$verb"; done
  case "$verb" in
    install) cmd_install "$@" ;;
    start) for n in $(names_or_all "$@"); do with_lock "$n" "$(fn_for "$n" start)"; done ;;
    stop) for n in $(names_or_all "$@"); do with_lock "$n" "$(fn_for "$n" stop)"; done ;;
    restart)
      for n in $(names_or_all "$@"); do with_lock "$n" "$(fn_for "$n" stop)"; with_lock "$n" "$(fn_for "$n" start)"; done ;;
    status)
      local rc=0
      for n in $(names_or_all "$@"); do "$(fn_for "$n" status)" || rc=3; done
      return "$rc" ;;
    env) cmd_env "$@" ;;
    *) sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
}

main "$@"
