"""Settings: defaults, precedence (flags over environment over .env), and every start-up error."""

import os
import socket
import subprocess
import sys

import pytest

import proxy

ENDPOINT = "http://127.0.0.1:9/v1"


def run_proxy(args=(), env=None, timeout=30):
    environ = {key: value for key, value in os.environ.items() if key not in {s.env for s in proxy.SETTINGS}}
    environ.update(env or {})
    return subprocess.run([sys.executable, proxy.__file__] + list(args), env=environ, capture_output=True,
                          text=True, timeout=timeout)


def test_defaults():
    config = proxy.load_config([], {"AZURE_ENDPOINT": ENDPOINT})
    assert config == proxy.Config(endpoint=ENDPOINT)
    assert (config.host, config.port, config.max_retries, config.total_timeout) == ("127.0.0.1", 8888, 8, 600.0)
    assert config.api_key == "" and config.forced_model == "" and config.log_level == "INFO"


def test_every_setting_is_read_from_the_environment():
    environ = {"AZURE_ENDPOINT": ENDPOINT, "AZURE_API_KEY": "k", "HOST": "localhost", "PORT": "9999",
               "FORCED_MODEL": "gpt-x", "MAX_RETRIES": "3", "RETRY_BASE_DELAY": "0.5", "RETRY_MAX_DELAY": "4",
               "TOTAL_TIMEOUT": "50", "CONNECT_TIMEOUT": "2", "UPSTREAM_TIMEOUT": "7", "MAX_REQUEST_BYTES": "100",
               "MAX_RESPONSE_BYTES": "200", "LOG_LEVEL": "debug", "PROXY_API_KEY": "p",
               "ALLOWED_ORIGINS": "http://a.test, http://b.test:3000", "CLIENT_TIMEOUT": "9"}
    config = proxy.load_config([], environ)
    assert config == proxy.Config(
        endpoint=ENDPOINT, api_key="k", host="localhost", port=9999, forced_model="gpt-x", max_retries=3,
        retry_base_delay=0.5, retry_max_delay=4.0, total_timeout=50.0, connect_timeout=2.0, upstream_timeout=7.0,
        max_request_bytes=100, max_response_bytes=200, log_level="DEBUG", proxy_api_key="p",
        allowed_origins=("http://a.test", "http://b.test:3000"), client_timeout=9.0)
    assert {setting.env for setting in proxy.SETTINGS} == set(environ)


def test_empty_value_means_default():
    config = proxy.load_config([], {"AZURE_ENDPOINT": ENDPOINT, "PORT": "", "MAX_RETRIES": "  "})
    assert config.port == 8888 and config.max_retries == 8


def test_flags_override_environment():
    config = proxy.load_config(["--port", "7000", "--host", "localhost", "--debug"],
                               {"AZURE_ENDPOINT": ENDPOINT, "PORT": "6000", "HOST": "127.0.0.1"})
    assert (config.port, config.host, config.log_level) == (7000, "localhost", "DEBUG")


def test_environment_overrides_env_file_which_overrides_defaults(tmp_path):
    env_file = tmp_path / "settings.env"
    env_file.write_text("AZURE_ENDPOINT=%s\nPORT=abc\nMAX_RETRIES=zzz\n" % ENDPOINT)
    # MAX_RETRIES comes from the file and is bad: the file is read.
    result = run_proxy(["--env-file", str(env_file)], {"PORT": "0"})
    assert result.returncode == 2 and "MAX_RETRIES='zzz'" in result.stderr
    # PORT=abc in the file is overridden by the environment; the environment's bad value wins.
    env_file.write_text("AZURE_ENDPOINT=%s\nPORT=1234\n" % ENDPOINT)
    result = run_proxy(["--env-file", str(env_file)], {"PORT": "nope"})
    assert result.returncode == 2 and "PORT='nope'" in result.stderr
    # ... and a flag overrides both.
    result = run_proxy(["--env-file", str(env_file), "--port", "notaport"], {"PORT": "nope"})
    assert result.returncode == 2 and "PORT='notaport'" in result.stderr


BAD = [
    ({}, "AZURE_ENDPOINT is not set"),
    ({"AZURE_ENDPOINT": "not a url"}, "AZURE_ENDPOINT='not a url'"),
    ({"AZURE_ENDPOINT": "ftp://host/v1"}, "AZURE_ENDPOINT='ftp://host/v1'"),
    ({"AZURE_ENDPOINT": "http://host:99999/v1"}, "invalid port"),
    ({"PORT": "abc"}, "PORT='abc'"),
    ({"PORT": "70000"}, "PORT='70000'"),
    ({"MAX_RETRIES": "-1"}, "MAX_RETRIES='-1'"),
    ({"MAX_RETRIES": "1.5"}, "MAX_RETRIES='1.5'"),
    ({"RETRY_BASE_DELAY": "x"}, "RETRY_BASE_DELAY='x'"),
    ({"TOTAL_TIMEOUT": "0"}, "TOTAL_TIMEOUT='0'"),
    ({"UPSTREAM_TIMEOUT": "nan"}, "UPSTREAM_TIMEOUT='nan'"),
    ({"MAX_REQUEST_BYTES": "0"}, "MAX_REQUEST_BYTES='0'"),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL='LOUD'"),
    ({"RETRY_BASE_DELAY": "5", "RETRY_MAX_DELAY": "1"}, "RETRY_MAX_DELAY=1.0 is below"),
    ({"HOST": "0.0.0.0"}, "PROXY_API_KEY"),
    ({"ALLOWED_ORIGINS": "*"}, "ALLOWED_ORIGINS"),
]


@pytest.mark.parametrize("environ, message", BAD)
def test_bad_settings_raise_config_error(environ, message):
    environ = dict({"AZURE_ENDPOINT": ENDPOINT}, **environ) if environ else {}
    with pytest.raises(proxy.ConfigError) as caught:
        proxy.load_config([], environ)
    assert message in str(caught.value)


@pytest.mark.parametrize("environ, message", BAD[:6] + BAD[12:14])
def test_start_up_errors_are_one_line_and_exit_2(environ, message):
    environ = dict({"AZURE_ENDPOINT": ENDPOINT}, **environ) if environ else {}
    result = run_proxy(["--env-file", os.devnull], environ)
    assert result.returncode == 2
    assert result.stderr.startswith("proxy.py: error: ") and result.stderr.count("\n") == 1
    assert message in result.stderr and "Traceback" not in result.stderr


def test_missing_env_file_is_a_start_up_error(tmp_path):
    result = run_proxy(["--env-file", str(tmp_path / "nope.env")], {"AZURE_ENDPOINT": ENDPOINT})
    assert result.returncode == 2 and "nope.env does not exist" in result.stderr


def test_port_in_use_is_a_start_up_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_proxy(["--env-file", os.devnull], {"AZURE_ENDPOINT": ENDPOINT, "PORT": str(port)})
    assert result.returncode == 2
    assert "port %d" % port in result.stderr and "already in use" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("proxy.py: error:") and "Traceback" not in result.stderr


def test_help_lists_every_setting_with_its_default():
    result = run_proxy(["--help"])
    assert result.returncode == 0
    defaults = proxy.Config(endpoint="")
    for setting in proxy.SETTINGS:
        assert setting.env in result.stdout
        default = getattr(defaults, setting.field)
        if default not in ("", ()):
            assert "[default: %s]" % (default,) in result.stdout
    for flag in ("--port", "--host", "--env-file", "--debug", "--version"):
        assert flag in result.stdout


def test_env_example_and_readme_document_every_setting():
    here = os.path.dirname(proxy.__file__)
    example = open(os.path.join(here, ".env.example"), encoding="utf-8").read()
    readme = open(os.path.join(here, "README.md"), encoding="utf-8").read()
    for setting in proxy.SETTINGS:
        assert "\n%s=" % setting.env in example
        assert "| `%s` |" % setting.env in readme


def test_version():
    result = run_proxy(["--version"])
    assert result.returncode == 0 and proxy.__version__ in result.stdout


def test_runs_without_python_dotenv(tmp_path):
    blocker = tmp_path / "dotenv.py"
    blocker.write_text("raise ImportError('python-dotenv is hidden for this test')\n")
    script = ("import sys; sys.path.insert(0, %r); sys.argv = ['proxy.py', '--port', '0']; "
              "import runpy; runpy.run_path(%r, run_name='__main__')" % (str(tmp_path), proxy.__file__))
    environ = {key: value for key, value in os.environ.items() if key not in {s.env for s in proxy.SETTINGS}}
    environ["AZURE_ENDPOINT"] = ENDPOINT
    process = subprocess.Popen([sys.executable, "-c", script], env=environ, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in process.stderr:  # ends when the process does; the banner comes first
            lines.append(line)
            if "listening on" in line:
                break
    finally:
        process.terminate()
        rest = process.communicate(timeout=30)[1]
    text = "".join(lines) + rest
    assert "listening on" in text
    assert "python-dotenv is not installed" in text and "pip install -r requirements.txt" in text
    assert process.returncode == 0 and "Traceback" not in text
