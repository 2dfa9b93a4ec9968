#!/usr/bin/env bash
# chatgpt.sh: run Codex (or another client) behind the retry-shield proxy.
#
#   ./chatgpt.sh "prompt"                                 interactive Codex
#   ./chatgpt.sh exec --skip-git-repo-check "prompt"      one non-interactive turn
#
# Starts proxy.py (or reuses one already answering on PORT), routes the client
# through it with command-line overrides (your own config.toml is never edited),
# runs the client with every argument untouched, and exits with the client's exit
# code. Every chatgpt.sh using a proxy holds a lease on it; the last one to leave
# stops it (only a proxy that a chatgpt.sh started and /health confirms).
set -euo pipefail

CLIENT_EXECUTABLE="${CLIENT_EXECUTABLE:-codex}"
CLIENT_CONFIG_DIR="${CLIENT_CONFIG_DIR:-${CODEX_HOME:-$HOME/.codex}}"
START_TIMEOUT="${SHIELD_START_TIMEOUT:-20}"
STOP_TIMEOUT=15  # seconds a stopping proxy may take (it gives requests in flight 5)
PROVIDER_ID="retry_shield"  # Codex refuses the reserved ids openai, ollama, lmstudio, amazon-bedrock
KEY_VARIABLE="RETRY_SHIELD_API_KEY"

PYTHON="${PYTHON:-}"  # chosen in main: PYTHON, else .venv/bin/python3 beside this script, else python3
PYTHON_PATH=""        # that interpreter's own path, as it reports it
port=""
proxy_pid=""    # the proxy this script started (its child)
proxy_ready=""  # 1 once that proxy answered and was recorded for the other leasers
client_pid=""
leases=""       # the lease folder of the port
leased=""       # 1 from the moment this script touches the lease folder until it has left
locked=""       # 1 while this script holds the lease lock (file descriptor 9)
port_setting=""
key_setting=""
upstream_key_set=""

say() { printf 'chatgpt.sh: %s\n' "$*" >&2; }

# The folder this script lives in, through any chain of symlinks (no readlink -f on macOS).
script_dir() {
  local source="${BASH_SOURCE[0]}" dir
  while [ -L "$source" ]; do
    dir="$(cd -P "$(dirname "$source")" && pwd)"
    source="$(readlink "$source")"
    case "$source" in /*) ;; *) source="$dir/$source" ;; esac
  done
  cd -P "$(dirname "$source")" && pwd
}

# Prints, each ended by a NUL: the interpreter's own path (sys.executable: a venv's python3, or
# the real one behind a pyenv shim, which then costs no more start-ups), 1 or 0 (whether
# python-dotenv is there), then each setting
# named as proxy.py will see it: from the environment, else from .env, read by python-dotenv
# just as proxy.py reads it (load_dotenv without override), stripped; empty when unset. For a
# name given as ?NAME, only 1 or 0: whether it is set (so that a secret never reaches this
# script). Without python-dotenv, from the environment only, as for the proxy. Run from the
# script's folder, so that python3 imports what proxy.py imports, whatever the working directory.
SETTINGS_READER='
import os, sys
path, names = sys.argv[1], sys.argv[2:]
try:
    from dotenv import load_dotenv
except ImportError:
    load_dotenv = None
if load_dotenv is not None and os.path.isfile(path):
    load_dotenv(path, override=False)
fields = [sys.executable, "1" if load_dotenv is not None else "0"]
for name in names:
    value = os.environ.get(name.lstrip("?"), "").strip()
    fields.append(("1" if value else "0") if name.startswith("?") else value)
sys.stdout.write("".join(field + "\0" for field in fields))
'

# Sets port_setting, key_setting (PORT and PROXY_API_KEY, empty when unset) and upstream_key_set
# (1 when AZURE_API_KEY is set), never with a .env parser of its own, so that the wrapper and the
# proxy cannot disagree.
read_settings() {
  local interpreter="" have_dotenv=""
  {
    IFS= read -r -d '' interpreter && IFS= read -r -d '' have_dotenv && IFS= read -r -d '' port_setting &&
      IFS= read -r -d '' key_setting && IFS= read -r -d '' upstream_key_set
  } < <(cd "$HERE" && "$PYTHON" -c "$SETTINGS_READER" "$ENV_FILE" PORT PROXY_API_KEY '?AZURE_API_KEY') || {
    say "could not read the settings from the environment and $ENV_FILE (see the error above)"
    exit 1
  }
  if [ -x "$interpreter" ]; then PYTHON_PATH="$interpreter"; else PYTHON_PATH="$PYTHON"; fi
  if [ "$have_dotenv" != 1 ] && [ -f "$ENV_FILE" ]; then
    say "python-dotenv is not installed for $PYTHON, so neither this script nor the proxy reads" \
      "$ENV_FILE; settings come from the environment only (install it, in $HERE:" \
      "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt)"
  fi
}

FREE_PORT='
import socket
with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1])
'

# Exit status 0: a retry-shield proxy answers on the port (its pid printed); 1: something else
# does; 2: nothing listens.
PROBE='
import http.client, json, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C: no traceback, the trap of this script acts
try:
    conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=2)
    conn.request("GET", "/health")
    body = conn.getresponse().read()
except http.client.HTTPException:
    sys.exit(1)
except OSError:
    sys.exit(2)
try:
    health = json.loads(body)
    if health.get("service") != "retry-shield":
        sys.exit(1)
except (ValueError, AttributeError):
    sys.exit(1)
print(health.get("pid", ""))
'
probe() { "$PYTHON_PATH" -c "$PROBE" "$1"; }

# Runs proxy.py in a session of its own: Ctrl-C and a closed terminal reach this script and
# the client, never a proxy that other terminals may be using. Same pid (exec).
DETACH='
import os, sys
try:
    os.setsid()
except OSError:
    pass
os.execv(sys.executable, [sys.executable] + sys.argv[1:])
'

# Takes the lock on file descriptor 9, which this script holds open on the lock file: the lock
# belongs to the open file, so it stays after python3 exits and goes when this script closes the
# file or dies (even by kill -9). Waits up to the seconds given. Exit status 3: the file locked is
# no longer the one at the path (the last one out removed the folder meanwhile): open it anew.
LOCKER='
import fcntl, os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_DFL)
path, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
while True:
    try:
        fcntl.flock(9, fcntl.LOCK_EX | fcntl.LOCK_NB)
        break
    except BlockingIOError:
        if time.monotonic() >= deadline:
            sys.exit(1)
        time.sleep(0.05)
held = os.fstat(9)
try:
    named = os.stat(path)
except FileNotFoundError:
    sys.exit(3)
sys.exit(0 if (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino) else 3)
'

# The leases: in ${TMPDIR:-/tmp}/retry-shield-PORT.leases/, a file wrapper-PID for each
# chatgpt.sh using the proxy on PORT, and the file proxy ("PID LOG") of the proxy a chatgpt.sh
# started there. Every change happens under the lock, so that a chatgpt.sh arriving and one
# leaving cannot both decide at once. A lease whose PID is gone (kill -9) counts for nothing.
# The last one out removes the folder.
lock_leases() {
  [ -z "$locked" ] || return 0
  local tries=0 status
  while :; do
    mkdir -p "$leases" 2>/dev/null || true
    if [ -L "$leases" ] || [ ! -d "$leases" ] || [ ! -O "$leases" ] || [ ! -w "$leases" ]; then
      say "$leases is not a folder of yours; remove it, or set TMPDIR to a folder of your own"
      return 1
    fi
    status=0
    { exec 9>>"$leases/lock"; } 2>/dev/null || status=3  # the folder went just now: again
    if [ "$status" -eq 0 ]; then
      "$PYTHON_PATH" -c "$LOCKER" "$leases/lock" "$((START_TIMEOUT + STOP_TIMEOUT + 10))" || status=$?
    fi
    if [ "$status" -eq 0 ]; then
      locked=1
      return 0
    fi
    exec 9>&-
    tries=$((tries + 1))
    if [ "$status" -ne 3 ] || [ "$tries" -ge 50 ]; then
      say "could not take the lock $leases/lock (another chatgpt.sh holds it too long?); try again"
      return 1
    fi
  done
}

unlock_leases() {
  if [ -n "$locked" ]; then
    locked=""
    exec 9>&-
  fi
}

# 0 when a chatgpt.sh other than this one holds a lease; forgets the leases of dead ones.
# shellcheck disable=SC2317  # called from cleanup (traps)
others_leasing() {
  local file pid found=1
  for file in "$leases"/wrapper-*; do
    [ -e "$file" ] || continue
    pid="${file##*/wrapper-}"
    if [ "$pid" != "$$" ] && kill -0 "$pid" 2>/dev/null; then
      found=0
    elif [ "$pid" != "$$" ]; then
      rm -f "$file"
    fi
  done
  return "$found"
}

# Whether the process is still there (a zombie, which nobody may reap soon, counts as gone).
# shellcheck disable=SC2317  # called from cleanup (traps)
running() {
  local state
  kill -0 "$1" 2>/dev/null || return 1
  state="$(ps -o stat= -p "$1" 2>/dev/null || true)"
  case "$state" in Z*) return 1 ;; esac
  return 0
}

# TERM to a proxy, then waits until it is gone: reaped when it is this script's child.
# shellcheck disable=SC2317  # called from cleanup (traps)
stop_proxy_pid() {
  local pid="$1" deadline
  kill -TERM "$pid" 2>/dev/null || true
  if [ "$pid" = "$proxy_pid" ]; then
    wait "$pid" 2>/dev/null || true
    proxy_pid=""
    return 0
  fi
  deadline=$((SECONDS + STOP_TIMEOUT))
  while running "$pid"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "the proxy (pid $pid) is still stopping after ${STOP_TIMEOUT}s"
      return 0
    fi
    sleep 0.1
  done
}

# The last leaser stops the recorded proxy if /health confirms it is that one (its own child
# also when it no longer answers), and forgets it.
# shellcheck disable=SC2317  # called from cleanup (traps)
stop_recorded_proxy() {
  local owner_pid="" owner_log="" health_pid="" status=0
  [ -f "$leases/proxy" ] || return 0
  read -r owner_pid owner_log <"$leases/proxy" || true
  health_pid="$(probe "$port")" || status=$?
  if [ "$status" -eq 0 ] && [ -n "$owner_pid" ] && [ "$health_pid" = "$owner_pid" ]; then
    stop_proxy_pid "$owner_pid"
  elif [ -n "$proxy_pid" ] && [ "$owner_pid" = "$proxy_pid" ]; then
    stop_proxy_pid "$proxy_pid"
  fi
  rm -f "$leases/proxy"
}

# shellcheck disable=SC2317  # called from cleanup (traps)
leave() {
  [ -n "$leased" ] || return 0
  if ! lock_leases; then
    rm -f "$leases/wrapper-$$"
    leased=""
    return 0
  fi
  rm -f "$leases/wrapper-$$"
  leased=""
  if [ -n "$proxy_pid" ] && [ -z "$proxy_ready" ]; then
    stop_proxy_pid "$proxy_pid"  # started here and never ready: nobody else uses it
  fi
  if ! others_leasing; then
    stop_recorded_proxy
    rm -f "$leases/lock"
    rmdir "$leases" 2>/dev/null || true
  fi
  unlock_leases
}

# shellcheck disable=SC2317  # called from traps
cleanup() {
  if [ -n "$client_pid" ] && kill -0 "$client_pid" 2>/dev/null; then
    kill -TERM "$client_pid" 2>/dev/null || true
    wait "$client_pid" 2>/dev/null || true
  fi
  leave
}

# shellcheck disable=SC2317  # called from traps
on_signal() {
  trap - INT TERM HUP
  cleanup
  exit "$1"
}

# Starts the proxy in the background (the lease lock held), its output appended to the log,
# and polls /health until this very proxy answers.
start_proxy() {
  local log="$1" offset=0 health_pid status deadline
  if [ -f "$log" ]; then offset=$(($(wc -c <"$log"))); fi
  if ! printf '=== %s chatgpt.sh (pid %s) starts the proxy on port %s\n' \
    "$(date '+%Y-%m-%d %H:%M:%S')" "$$" "$port" 2>/dev/null >>"$log"; then
    say "cannot write the proxy log $log; set SHIELD_LOG to a file you can write"
    exit 1
  fi
  "$PYTHON_PATH" -c "$DETACH" "$HERE/proxy.py" --port "$port" </dev/null >>"$log" 2>&1 9>&- &
  proxy_pid=$!
  deadline=$((SECONDS + START_TIMEOUT))
  while :; do
    if ! kill -0 "$proxy_pid" 2>/dev/null; then
      wait "$proxy_pid" 2>/dev/null || true
      proxy_pid=""
      say "the proxy stopped during start-up; its log ($log) ends with:"
      tail -c +"$((offset + 1))" "$log" | tail -n 20 >&2
      exit 1
    fi
    status=0
    health_pid="$(probe "$port")" || status=$?
    if [ "$status" -eq 0 ] && [ "$health_pid" = "$proxy_pid" ]; then
      printf '%s %s\n' "$proxy_pid" "$log" >"$leases/proxy"
      proxy_ready=1
      say "started the retry-shield proxy on port $port (pid $proxy_pid); its log: $log" \
        "(tail -f it to watch retries)"
      return 0
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "the proxy did not answer on port $port within ${START_TIMEOUT}s; its log ($log) ends with:"
      tail -c +"$((offset + 1))" "$log" | tail -n 20 >&2
      exit 1
    fi
    sleep 0.1
  done
}

# Takes a lease on the proxy of the port: reuses the retry-shield proxy answering there, or
# starts one.
arrive() {
  local log="$1" status=0 health_pid owner_pid="" owner_log="" tmp="${TMPDIR:-/tmp}"
  leases="${tmp%/}/retry-shield-$port.leases"
  leased=1  # before the folder exists: an interruption from here on still tidies it up
  lock_leases || exit 1
  : >"$leases/wrapper-$$"
  health_pid="$(probe "$port")" || status=$?
  if [ "$status" -eq 0 ]; then
    if [ -f "$leases/proxy" ]; then read -r owner_pid owner_log <"$leases/proxy" || true; fi
    if [ -n "$owner_pid" ] && [ "$owner_pid" = "$health_pid" ]; then
      say "reusing the retry-shield proxy on port $port (pid $health_pid) that another chatgpt.sh" \
        "started; the last one to exit stops it; its log: $owner_log (tail -f it to watch retries)"
    else
      rm -f "$leases/proxy"
      say "reusing the retry-shield proxy already running on port $port (pid $health_pid), which" \
        "no chatgpt.sh started: it is left running, its log is wherever its output goes"
    fi
  elif [ "$status" -eq 1 ]; then
    say "port $port is held by another program; stop it or set PORT in $ENV_FILE to a free port"
    exit 1
  else
    rm -f "$leases/proxy"  # whatever it names is gone
    start_proxy "$log"
  fi
  unlock_leases
}

# First run: give Codex a configuration of its own, pointing at the proxy.
first_run_config() {
  mkdir -p "$CLIENT_CONFIG_DIR"  # Codex refuses a CODEX_HOME that does not exist
  if [ ! -e "$CLIENT_CONFIG_DIR/config.toml" ] && [ -f "$HERE/config_template.toml" ]; then
    sed "s#http://127.0.0.1:8888/v1#http://127.0.0.1:$port/v1#" "$HERE/config_template.toml" \
      >"$CLIENT_CONFIG_DIR/config.toml"
    say "created $CLIENT_CONFIG_DIR/config.toml from config_template.toml"
  fi
}

main() {
  HERE="$(script_dir)"
  ENV_FILE="$HERE/.env"
  if ! command -v "$CLIENT_EXECUTABLE" >/dev/null 2>&1; then
    say "client '$CLIENT_EXECUTABLE' not found; install it (npm install -g @openai/codex) or set CLIENT_EXECUTABLE"
    exit 127
  fi
  if [ -z "$PYTHON" ]; then
    PYTHON=python3
    if [ -x "$HERE/.venv/bin/python3" ]; then PYTHON="$HERE/.venv/bin/python3"; fi
  fi
  if ! command -v "$PYTHON" >/dev/null 2>&1; then
    say "'$PYTHON' not found; install Python 3.8 or newer, or set PYTHON"
    exit 127
  fi

  read_settings
  port="${port_setting:-8888}"
  case "$port" in
    *[!0-9]* | "")
      say "PORT='$port' is not a port; set PORT in $ENV_FILE to a number from 1 to 65535 (0: a free one)"
      exit 1
      ;;
  esac
  if [ "$port" -eq 0 ]; then
    port="$("$PYTHON_PATH" -c "$FREE_PORT")"  # a proxy of this script's own, on a port free right now
  fi
  if [ "$upstream_key_set" != 1 ]; then
    say "AZURE_API_KEY is not set (environment or $ENV_FILE), so the upstream gets the client's dummy" \
      "key and will likely refuse it; set it in $ENV_FILE unless your upstream needs no key"
  fi
  local tmp="${TMPDIR:-/tmp}" log
  log="${SHIELD_LOG:-${tmp%/}/retry-shield-$port.log}"
  trap cleanup EXIT
  trap 'on_signal 130' INT
  trap 'on_signal 143' TERM
  trap 'on_signal 129' HUP
  arrive "$log"

  local base_url="http://127.0.0.1:$port/v1"
  export OPENAI_BASE_URL="$base_url"  # for clients that are not Codex
  export "$KEY_VARIABLE"="${key_setting:-dummy-key-the-proxy-holds-the-real-one}"
  local overrides=()
  case "$(basename "$CLIENT_EXECUTABLE")" in
    codex*)
      export CODEX_HOME="$CLIENT_CONFIG_DIR"
      first_run_config
      overrides=(-c "model_provider=$PROVIDER_ID"
        -c "model_providers.$PROVIDER_ID={name=\"retry-shield\",base_url=\"$base_url\",env_key=\"$KEY_VARIABLE\",wire_api=\"responses\"}")
      ;;
  esac

  # In the background so that TERM reaches this script at once; the subshell gives the
  # client back the default Ctrl-C a background job would otherwise ignore. From here on this
  # script prints nothing while the client runs: the proxy writes only to its log.
  local status=0
  (trap - INT QUIT; exec "$CLIENT_EXECUTABLE" ${overrides[@]+"${overrides[@]}"} "$@") <&0 &
  client_pid=$!
  wait "$client_pid" || status=$?
  client_pid=""
  exit "$status"
}

main "$@"
