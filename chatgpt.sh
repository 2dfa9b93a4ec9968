#!/usr/bin/env bash
# chatgpt.sh: run Codex (or another client) behind the retry-shield proxy.
#
#   ./chatgpt.sh "prompt"            interactive Codex
#   ./chatgpt.sh exec "prompt"       one non-interactive turn
#
# Starts proxy.py (or reuses one already answering on PORT), routes the client
# through it with command-line overrides (your own config.toml is never edited),
# runs the client with every argument untouched, stops the proxy it started, and
# exits with the client's exit code.
set -euo pipefail

CLIENT_EXECUTABLE="${CLIENT_EXECUTABLE:-codex}"
CLIENT_CONFIG_DIR="${CLIENT_CONFIG_DIR:-${CODEX_HOME:-$HOME/.codex}}"
PYTHON="${PYTHON:-python3}"
START_TIMEOUT="${SHIELD_START_TIMEOUT:-20}"
PROVIDER_ID="retry_shield"  # Codex refuses the reserved ids openai, ollama, lmstudio, amazon-bedrock
KEY_VARIABLE="RETRY_SHIELD_API_KEY"

proxy_pid=""
client_pid=""
port_setting=""
key_setting=""

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

# Prints, each ended by a NUL: 1 or 0 (whether python-dotenv is there), then each setting
# named as proxy.py will see it: from the environment, else from .env, read by python-dotenv
# just as proxy.py reads it (load_dotenv without override), stripped; empty when unset.
# Without python-dotenv, from the environment only, as for the proxy. Run from the script's
# folder, so that python3 imports what proxy.py imports, whatever the working directory.
SETTINGS_READER='
import os, sys
path, names = sys.argv[1], sys.argv[2:]
try:
    from dotenv import load_dotenv
except ImportError:
    load_dotenv = None
if load_dotenv is not None and os.path.isfile(path):
    load_dotenv(path, override=False)
fields = ["1" if load_dotenv is not None else "0"] + [os.environ.get(name, "").strip() for name in names]
sys.stdout.write("".join(field + "\0" for field in fields))
'

# Sets port_setting and key_setting (PORT and PROXY_API_KEY, empty when unset), never with a
# .env parser of its own, so that the wrapper and the proxy cannot disagree.
read_settings() {
  local have_dotenv=""
  {
    IFS= read -r -d '' have_dotenv && IFS= read -r -d '' port_setting && IFS= read -r -d '' key_setting
  } < <(cd "$HERE" && "$PYTHON" -c "$SETTINGS_READER" "$ENV_FILE" PORT PROXY_API_KEY) || {
    say "could not read the settings from the environment and $ENV_FILE (see the error above)"
    exit 1
  }
  if [ "$have_dotenv" != 1 ] && [ -f "$ENV_FILE" ]; then
    say "python-dotenv is not installed for $PYTHON, so neither this script nor the proxy reads" \
      "$ENV_FILE; settings come from the environment only (install it: pip install -r requirements.txt)"
  fi
}

# 0: this proxy answers on the port; 1: something else does; 2: nothing listens.
probe() {
  "$PYTHON" - "$1" <<'PY'
import http.client, json, sys
try:
    conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=2)
    conn.request("GET", "/health")
    body = conn.getresponse().read()
except OSError:
    sys.exit(2)
try:
    sys.exit(0 if json.loads(body).get("service") == "retry-shield" else 1)
except (ValueError, AttributeError):
    sys.exit(1)
PY
}

# shellcheck disable=SC2317  # called from traps
cleanup() {
  if [ -n "$client_pid" ] && kill -0 "$client_pid" 2>/dev/null; then
    kill -TERM "$client_pid" 2>/dev/null || true
    wait "$client_pid" 2>/dev/null || true
  fi
  if [ -n "$proxy_pid" ] && kill -0 "$proxy_pid" 2>/dev/null; then
    kill -TERM "$proxy_pid" 2>/dev/null || true
    wait "$proxy_pid" 2>/dev/null || true
  fi
}

# shellcheck disable=SC2317  # called from traps
on_signal() {
  trap - INT TERM HUP
  cleanup
  exit "$1"
}

start_proxy() {
  local port="$1" log="$2" status
  set +e
  probe "$port"
  status=$?
  set -e
  if [ "$status" -eq 0 ]; then
    say "reusing the retry-shield proxy already running on port $port"
    return
  fi
  if [ "$status" -eq 1 ]; then
    say "port $port is held by another program; stop it or set PORT in $ENV_FILE to a free port"
    exit 1
  fi
  "$PYTHON" "$HERE/proxy.py" --port "$port" >"$log" 2>&1 &
  proxy_pid=$!
  local deadline=$((SECONDS + START_TIMEOUT))
  while :; do
    if ! kill -0 "$proxy_pid" 2>/dev/null; then
      say "the proxy stopped during start-up; its log ($log) ends with:"
      tail -n 20 "$log" >&2
      proxy_pid=""
      exit 1
    fi
    if probe "$port"; then
      return
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "the proxy did not answer on port $port within ${START_TIMEOUT}s; its log ($log) ends with:"
      tail -n 20 "$log" >&2
      exit 1
    fi
    sleep 0.1
  done
}

# First run: give Codex a configuration of its own, pointing at the proxy.
first_run_config() {
  local port="$1"
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
  if ! command -v "$PYTHON" >/dev/null 2>&1; then
    say "'$PYTHON' not found; install Python 3.8 or newer, or set PYTHON"
    exit 127
  fi

  local port log
  read_settings
  port="${port_setting:-8888}"
  log="${SHIELD_LOG:-${TMPDIR:-/tmp}/retry-shield-$port.log}"
  trap cleanup EXIT
  trap 'on_signal 130' INT
  trap 'on_signal 143' TERM
  trap 'on_signal 129' HUP
  start_proxy "$port" "$log"

  local base_url="http://127.0.0.1:$port/v1"
  export OPENAI_BASE_URL="$base_url"  # for clients that are not Codex
  export "$KEY_VARIABLE"="${key_setting:-dummy-key-the-proxy-holds-the-real-one}"
  local overrides=()
  case "$(basename "$CLIENT_EXECUTABLE")" in
    codex*)
      export CODEX_HOME="$CLIENT_CONFIG_DIR"
      first_run_config "$port"
      overrides=(-c "model_provider=$PROVIDER_ID"
        -c "model_providers.$PROVIDER_ID={name=\"retry-shield\",base_url=\"$base_url\",env_key=\"$KEY_VARIABLE\",wire_api=\"responses\"}")
      ;;
  esac

  # In the background so that TERM reaches this script at once; the subshell gives the
  # client back the default Ctrl-C a background job would otherwise ignore.
  local status=0
  (trap - INT QUIT; exec "$CLIENT_EXECUTABLE" ${overrides[@]+"${overrides[@]}"} "$@") <&0 &
  client_pid=$!
  wait "$client_pid" || status=$?
  client_pid=""
  exit "$status"
}

main "$@"
