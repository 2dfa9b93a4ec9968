"""Settings: defaults, precedence (flags over environment over .env), and every start-up error.

Start-up errors run through main() in this process (the script is
``raise SystemExit(main())``), which is fast; a few run ``python proxy.py`` for real:
the exit code of the script itself, a port in use, the banner, and life without python-dotenv.
"""

import http.client
import json
import os
import re
import select
import socket
import subprocess
import sys
import time

import pytest

import proxy
from tests.helpers import assert_one_line_error, main_in_process
import retry_shield
from retry_shield.config import SETTINGS, load_config
from retry_shield.errors import ConfigError
from retry_shield.main import load_env_file, main

ENDPOINT = "http://127.0.0.1:9/v1"
NAMES = [setting.env for setting in SETTINGS]

# The documented defaults, written out: a changed default must change the docs too.
DEFAULTS = {
    "AZURE_API_KEY": "", "HOST": "127.0.0.1", "PORT": 8888, "FORCED_MODEL": "", "MAX_RETRIES": 8,
    "RETRY_BASE_DELAY": 1.0, "RETRY_MAX_DELAY": 30.0, "TOTAL_TIMEOUT": 600.0, "CONNECT_TIMEOUT": 10.0,
    "UPSTREAM_TIMEOUT": 120.0, "MAX_REQUEST_BYTES": 16 * 1024 * 1024, "MAX_RESPONSE_BYTES": 256 * 1024 * 1024,
    "LOG_LEVEL": "INFO", "PROXY_API_KEY": "", "ALLOWED_ORIGINS": (), "CLIENT_TIMEOUT": 60.0,
    "UPSTREAM_API": "auto", "FAILOVER_AFTER_WAIT": 20.0, "FAILOVER_AFTER_FAILURES": 3,
    "USAGE_LOG": "", "RPM_LIMIT": 0,
}
FIELD = {setting.env: setting.field for setting in SETTINGS}


def settings_of(config):
    return {name: getattr(config, FIELD[name]) for name in NAMES if name != "AZURE_ENDPOINT"}


@pytest.fixture
def empty_env_file(tmp_path):
    path = tmp_path / "empty.env"
    path.write_text("")
    return str(path)


# ---------------------------------------------------------------------------
# load_config
# ---------------------------------------------------------------------------


def test_every_setting_has_a_default_but_the_endpoint():
    assert sorted(DEFAULTS) == sorted(set(NAMES) - {"AZURE_ENDPOINT"})
    config = load_config([], {"AZURE_ENDPOINT": ENDPOINT})
    assert config.endpoint == ENDPOINT
    assert settings_of(config) == DEFAULTS


def test_every_setting_is_read_from_the_environment():
    environ = {"AZURE_ENDPOINT": "https://x.openai.azure.com/openai/v1", "AZURE_API_KEY": "k", "HOST": "localhost",
               "PORT": "9999", "FORCED_MODEL": "gpt-x", "MAX_RETRIES": "3", "RETRY_BASE_DELAY": "0.5",
               "RETRY_MAX_DELAY": "4", "TOTAL_TIMEOUT": "50", "CONNECT_TIMEOUT": "2", "UPSTREAM_TIMEOUT": "7",
               "MAX_REQUEST_BYTES": "100", "MAX_RESPONSE_BYTES": "200", "LOG_LEVEL": "debug",
               "PROXY_API_KEY": "p", "ALLOWED_ORIGINS": "http://a.test, http://b.test:3000/", "CLIENT_TIMEOUT": "9",
               "UPSTREAM_API": "Chat", "FAILOVER_AFTER_WAIT": "5", "FAILOVER_AFTER_FAILURES": "2",
               "USAGE_LOG": "~/usage.jsonl", "RPM_LIMIT": "270"}
    assert sorted(environ) == sorted(NAMES)
    config = load_config([], environ)
    assert config.endpoint == "https://x.openai.azure.com/openai/v1"
    assert settings_of(config) == {
        "AZURE_API_KEY": "k", "HOST": "localhost", "PORT": 9999, "FORCED_MODEL": "gpt-x", "MAX_RETRIES": 3,
        "RETRY_BASE_DELAY": 0.5, "RETRY_MAX_DELAY": 4.0, "TOTAL_TIMEOUT": 50.0, "CONNECT_TIMEOUT": 2.0,
        "UPSTREAM_TIMEOUT": 7.0, "MAX_REQUEST_BYTES": 100, "MAX_RESPONSE_BYTES": 200, "LOG_LEVEL": "DEBUG",
        "PROXY_API_KEY": "p", "ALLOWED_ORIGINS": ("http://a.test", "http://b.test:3000"), "CLIENT_TIMEOUT": 9.0,
        "UPSTREAM_API": "chat", "FAILOVER_AFTER_WAIT": 5.0, "FAILOVER_AFTER_FAILURES": 2,
        "USAGE_LOG": os.path.expanduser("~/usage.jsonl"), "RPM_LIMIT": 270}


@pytest.mark.parametrize("empty", ["", "   "])
def test_an_empty_value_means_the_default(empty):
    environ = dict.fromkeys(NAMES, empty)
    environ["AZURE_ENDPOINT"] = ENDPOINT
    assert settings_of(load_config([], environ)) == DEFAULTS
    environ["AZURE_ENDPOINT"] = empty
    with pytest.raises(ConfigError, match="AZURE_ENDPOINT is not set"):
        load_config([], environ)


def test_flags_override_the_environment():
    environ = {"AZURE_ENDPOINT": ENDPOINT, "PORT": "6000", "HOST": "127.0.0.2", "LOG_LEVEL": "ERROR"}
    config = load_config(["--port", "7000", "--host", "localhost", "--debug"], environ)
    assert (config.port, config.host, config.log_level) == (7000, "localhost", "DEBUG")
    config = load_config([], environ)
    assert (config.port, config.host, config.log_level) == (6000, "127.0.0.2", "ERROR")


def test_precedence_env_file_then_environment_then_flags(environ, tmp_path):
    """What main() does: _load_env_file() fills os.environ without overriding it, then load_config()."""
    env_file = tmp_path / "settings.env"
    env_file.write_text("AZURE_ENDPOINT=http://file.test/v1\nPORT=1111\nHOST=127.0.0.3\nMAX_RETRIES=3\n"
                        "FORCED_MODEL=from-file\n")
    environ.update({"PORT": "2222", "FORCED_MODEL": "from-environment"})
    argv = ["--env-file", str(env_file), "--port", "3333"]
    found = load_env_file(argv)
    assert found.found and found.keys == ("AZURE_ENDPOINT", "PORT", "HOST", "MAX_RETRIES", "FORCED_MODEL")
    config = load_config(argv, os.environ, found)
    assert (config.endpoint, config.max_retries, config.host) == ("http://file.test/v1", 3, "127.0.0.3")  # file
    assert config.forced_model == "from-environment"  # environment over file
    assert config.port == 3333  # flag over environment and file
    assert load_config(["--host", "localhost"], os.environ).host == "localhost"  # flag over file
    assert load_config([], os.environ).port == 2222


BAD = [
    # (environment, text the one line must contain)
    ({"AZURE_ENDPOINT": None}, "AZURE_ENDPOINT is not set"),
    ({"AZURE_ENDPOINT": "not a url"}, "AZURE_ENDPOINT='not a url'"),
    ({"AZURE_ENDPOINT": "ftp://host/v1"}, "AZURE_ENDPOINT='ftp://host/v1'"),
    ({"AZURE_ENDPOINT": "http://host:99999/v1"}, "AZURE_ENDPOINT='http://host:99999/v1'"),
    ({"PORT": "abc"}, "PORT='abc'"),
    ({"PORT": "70000"}, "PORT='70000'"),
    ({"PORT": "-1"}, "PORT='-1'"),
    ({"MAX_RETRIES": "-1"}, "MAX_RETRIES='-1'"),
    ({"MAX_RETRIES": "1.5"}, "MAX_RETRIES='1.5'"),
    ({"RETRY_BASE_DELAY": "x"}, "RETRY_BASE_DELAY='x'"),
    ({"RETRY_BASE_DELAY": "-0.5"}, "RETRY_BASE_DELAY='-0.5'"),
    ({"TOTAL_TIMEOUT": "0"}, "TOTAL_TIMEOUT='0'"),
    ({"CONNECT_TIMEOUT": "0"}, "CONNECT_TIMEOUT='0'"),
    ({"UPSTREAM_TIMEOUT": "nan"}, "UPSTREAM_TIMEOUT='nan'"),
    ({"MAX_REQUEST_BYTES": "0"}, "MAX_REQUEST_BYTES='0'"),
    ({"MAX_RESPONSE_BYTES": "1MB"}, "MAX_RESPONSE_BYTES='1MB'"),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL='LOUD'"),
    ({"RPM_LIMIT": "-5"}, "RPM_LIMIT='-5' is not valid; use a whole number of at least 0"),
    ({"RPM_LIMIT": "100/min"}, "RPM_LIMIT='100/min'"),
    ({"RETRY_BASE_DELAY": "5", "RETRY_MAX_DELAY": "1"}, "RETRY_MAX_DELAY=1.0 is below RETRY_BASE_DELAY=5.0"),
    ({"HOST": "0.0.0.0"}, "PROXY_API_KEY"),
    ({"ALLOWED_ORIGINS": "*"}, "ALLOWED_ORIGINS"),
    ({"UPSTREAM_API": "completions"}, "UPSTREAM_API='completions' is not an API; use auto"),
    ({"UPSTREAM_API": "chat", "AZURE_ENDPOINT": "http://h/openai/deployments/d/responses"},
     "AZURE_ENDPOINT is a /responses URL but UPSTREAM_API=chat"),
    ({"UPSTREAM_API": "responses", "AZURE_ENDPOINT": "http://h/openai/deployments/d/chat/completions"},
     "AZURE_ENDPOINT is a /chat/completions URL but UPSTREAM_API=responses"),
]


def bad_environ(changes):
    environ = {"AZURE_ENDPOINT": ENDPOINT}
    environ.update(changes)
    return {name: value for name, value in environ.items() if value is not None}


@pytest.mark.parametrize("changes, message", BAD, ids=[message for _, message in BAD])
def test_bad_settings_raise_config_error(changes, message):
    with pytest.raises(ConfigError) as caught:
        load_config([], bad_environ(changes))
    assert message in str(caught.value)


@pytest.mark.parametrize("name", ["CONNECT_TIMEOUT", "CLIENT_TIMEOUT"])
def test_a_timeout_no_socket_can_take_is_refused_at_start_up(name):
    """socket.settimeout(inf) raises OverflowError; accepted, ``inf`` breaks every request later."""
    try:
        config = load_config([], {"AZURE_ENDPOINT": ENDPOINT, name: "inf"})
    except ConfigError as exc:
        assert name in str(exc)
        return
    with socket.socket() as sock:
        sock.settimeout(getattr(config, FIELD[name]))


# ---------------------------------------------------------------------------
# Start-up errors as the user sees them: exit 2, one line on stderr, no traceback
# ---------------------------------------------------------------------------


START_UP = [
    ({"AZURE_ENDPOINT": None}, "AZURE_ENDPOINT"),
    ({"AZURE_ENDPOINT": "not a url"}, "AZURE_ENDPOINT='not a url'"),
    ({"PORT": "abc"}, "PORT='abc'"),
    ({"PORT": "70000"}, "PORT='70000'"),
    ({"MAX_RETRIES": "-1"}, "MAX_RETRIES='-1'"),
    ({"RETRY_BASE_DELAY": "x"}, "RETRY_BASE_DELAY='x'"),
    ({"TOTAL_TIMEOUT": "0"}, "TOTAL_TIMEOUT='0'"),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL='LOUD'"),
    ({"RPM_LIMIT": "-5"}, "RPM_LIMIT='-5'"),
    ({"RETRY_BASE_DELAY": "2", "RETRY_MAX_DELAY": "0.5"}, "RETRY_MAX_DELAY"),
]


@pytest.mark.parametrize("changes, name", START_UP, ids=[name for _, name in START_UP])
def test_start_up_error_is_one_line_and_exit_2(changes, name, environ, empty_env_file, taken_port, capsys):
    environ["PORT"] = str(taken_port)
    environ.update(bad_environ(changes))
    code, out, err = main_in_process(["--env-file", empty_env_file], capsys)
    assert_one_line_error(code, err, name)
    assert out == ""


def test_bad_value_in_the_env_file_is_a_start_up_error(environ, tmp_path, taken_port, capsys):
    env_file = tmp_path / "settings.env"
    env_file.write_text("AZURE_ENDPOINT=%s\nPORT=%d\nMAX_RETRIES=lots\n" % (ENDPOINT, taken_port))
    code, _, err = main_in_process(["--env-file", str(env_file)], capsys)
    assert_one_line_error(code, err, "MAX_RETRIES='lots'")


def test_missing_env_file_is_a_start_up_error(environ, tmp_path, taken_port, capsys):
    environ.update({"AZURE_ENDPOINT": ENDPOINT, "PORT": str(taken_port)})
    missing = str(tmp_path / "nope.env")
    code, _, err = main_in_process(["--env-file", missing], capsys)
    assert_one_line_error(code, err, "--env-file", missing, "does not exist")


def test_help_lists_every_setting_with_its_default(environ, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["--help"])
    assert caught.value.code == 0
    text = capsys.readouterr().out
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ") and line.split()}
    for name in NAMES:
        assert name in lines, name
        default = DEFAULTS.get(name, "")
        if default not in ("", ()):
            assert lines[name].endswith("[default: %s]" % (default,)), lines[name]
        else:
            assert "[default:" not in lines[name]
    assert "required" in lines["AZURE_ENDPOINT"]
    for flag in ("--port", "--host", "--env-file", "--debug", "--check", "--stats", "--since", "--version", "--help"):
        assert flag in text


def test_env_example_and_readme_document_every_setting():
    here = os.path.dirname(os.path.abspath(proxy.__file__))
    with open(os.path.join(here, ".env.example"), encoding="utf-8") as handle:
        example = handle.read()
    with open(os.path.join(here, "README.md"), encoding="utf-8") as handle:
        readme = handle.read()
    for name in NAMES:
        assert "\n%s=" % name in example, name
        assert "| `%s` |" % name in readme, name


def test_version(environ, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out == "proxy.py %s\n" % retry_shield.__version__
    assert re.match(r"^\d+\.\d+\.\d+$", retry_shield.__version__)


# ---------------------------------------------------------------------------
# python proxy.py, for real
# ---------------------------------------------------------------------------


def script_environ(**settings):
    environ = {name: value for name, value in os.environ.items() if name not in NAMES}
    environ.update(settings)
    return environ


def run_script(args, environ):
    return subprocess.run([sys.executable, proxy.__file__] + list(args), env=environ, capture_output=True,
                          text=True, timeout=30)


def test_the_script_exits_2_with_one_line(empty_env_file):
    result = run_script(["--env-file", empty_env_file], script_environ(AZURE_ENDPOINT=ENDPOINT, PORT="abc"))
    assert_one_line_error(result.returncode, result.stderr, "PORT='abc'")
    assert result.stdout == ""


def test_port_in_use_is_a_start_up_error(empty_env_file, taken_port):
    result = run_script(["--env-file", empty_env_file], script_environ(AZURE_ENDPOINT=ENDPOINT,
                                                                       PORT=str(taken_port)))
    assert_one_line_error(result.returncode, result.stderr, "port %d" % taken_port, "already in use", "PORT")


class Running:
    """``python proxy.py`` started for real; its stderr read against a deadline."""

    def __init__(self, args, environ):
        self.process = subprocess.Popen([sys.executable, proxy.__file__] + list(args), env=environ,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.err = b""

    def wait_for(self, text, timeout=20.0):
        deadline = time.monotonic() + timeout
        while text.encode() not in self.err:
            remaining = deadline - time.monotonic()
            ready = select.select([self.process.stderr], [], [], max(0.0, remaining))[0]
            data = os.read(self.process.stderr.fileno(), 65536) if ready else b""
            if not data:
                raise AssertionError("no %r on stderr within %ss:\n%s" % (text, timeout, self.err.decode()))
            self.err += data
        return self.err.decode()

    @property
    def port(self):
        return int(re.search(rb"listening on http://127\.0\.0\.1:(\d+)/v1", self.err).group(1))

    def stop(self):
        """Kill it (stopping cleanly is tested elsewhere, and waits out serve_forever's poll)."""
        self.process.kill()
        self.err += self.process.communicate(timeout=20)[1]
        return self.err.decode()


@pytest.fixture
def refusing_port():
    """A port bound but not listening: connections to it are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_keys_never_reach_the_log(empty_env_file, refusing_port):
    secret = "sk-secret-XYZ"
    endpoint = "http://user:%s@127.0.0.1:%d/v1?api-key=%s" % (secret, refusing_port, secret)
    running = Running(["--env-file", empty_env_file, "--debug"], script_environ(
        AZURE_ENDPOINT=endpoint, AZURE_API_KEY=secret, PORT="0", MAX_RETRIES="0"))
    try:
        running.wait_for("retries: up to")  # the banner's last line
        conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=20)
        conn.request("POST", "/v1/responses", body=json.dumps({"model": "m", "input": "hi"}),
                     headers={"Content-Type": "application/json", "Authorization": "Bearer client-dummy"})
        response = conn.getresponse()
        body = response.read()
        conn.close()
        running.wait_for("giving up")
    finally:
        err = running.stop()
    assert response.status == 502 and secret.encode() not in body
    assert "listening on" in err and "upstream: http://127.0.0.1:%d/v1 (key set)" % refusing_port in err
    assert "attempt 1/1" in err  # the debug lines that name the upstream URL were written...
    assert secret not in err  # ...and none carries the key
    assert "Traceback" not in err


def test_runs_without_python_dotenv_and_says_how_to_install_it(tmp_path):
    hidden = tmp_path / "hide-dotenv"
    hidden.mkdir()
    (hidden / "dotenv.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'dotenv'\", name='dotenv')\n")
    env_file = tmp_path / "settings.env"
    env_file.write_text("FORCED_MODEL=from-the-file\n")
    environ = script_environ(AZURE_ENDPOINT=ENDPOINT, PORT="0")
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hidden), environ.get("PYTHONPATH")]))
    running = Running(["--env-file", str(env_file)], environ)
    try:
        running.wait_for("listening on")
        running.wait_for("retries: up to")
    finally:
        err = running.stop()
    assert "python-dotenv is not installed" in err and "pip install -r requirements.txt" in err
    assert "from-the-file" not in err  # settings came from the environment only
    assert "Traceback" not in err
