"""Start-up checks for the mistakes of a first run: placeholders, an Azure host without a path,
misspelled keys in .env, a missing .env, flags named as flags, and python-dotenv missing.

Pure checks through load_config and config_warnings; start-up as the user sees it through
main() in this process; and real ``python proxy.py`` runs where the script's own surroundings
matter (a copy beside .env.example, no .env at all, no python-dotenv).
"""

import os
import shutil
import subprocess
import sys

import pytest

import proxy
from tests.helpers import assert_one_line_error, main_in_process
import retry_shield.main
from retry_shield.config import SETTINGS, EnvFile, config_warnings, load_config, placeholder_in
from retry_shield.errors import ConfigError

HERE = os.path.dirname(os.path.abspath(proxy.__file__))
ENDPOINT = "http://127.0.0.1:9/v1"
NAMES = [setting.env for setting in SETTINGS]


# ---------------------------------------------------------------------------
# Placeholders in AZURE_ENDPOINT
# ---------------------------------------------------------------------------

PLACEHOLDERS = [
    ("https://YOUR-RESOURCE.openai.azure.com/openai/v1", "YOUR-RESOURCE"),  # .env.example's
    ("https://your-resource-name.openai.azure.com/openai/v1", "your-resource-name"),
    ("https://YOUR_RESOURCE_NAME.openai.azure.com/openai/v1", "YOUR_RESOURCE_NAME"),
    ("https://NAME.openai.azure.com/openai/v1", "NAME"),  # README's
    ("https://RESOURCE.cognitiveservices.azure.com/openai/v1", "RESOURCE"),
    ("https://x1.openai.azure.com/openai/deployments/NAME/chat/completions?api-version=2024-10-21", "NAME"),
    ("https://x1.openai.azure.com/openai/deployments/DEPLOYMENT/chat/completions?api-version=2024-10-21",
     "DEPLOYMENT"),
    ("https://x1.openai.azure.com/openai/deployments/DEPLOYMENT-NAME/chat/completions", "DEPLOYMENT-NAME"),
    ("https://<resource>.openai.azure.com/openai/v1", "<resource>"),
    ("https://{resource}.openai.azure.com/openai/v1", "{resource}"),
    ("https://x1.openai.azure.com/openai/deployments/<deployment>/chat/completions", "<deployment>"),
    ("<your endpoint>", "<your endpoint>"),
    ("https://xxxx.openai.azure.com/openai/v1", "xxxx"),
    ("https://example.com/v1", "example.com"),
    ("https://api.example.com/v1", "example.com"),
    ("http://llm.example.org:8080/v1", "example.org"),
    ("https://gateway.example/v1", "example"),
]


@pytest.mark.parametrize("url, placeholder", PLACEHOLDERS, ids=[url for url, _ in PLACEHOLDERS])
def test_a_placeholder_endpoint_is_refused_naming_what_to_put_there(url, placeholder):
    assert placeholder_in(url) == placeholder
    with pytest.raises(ConfigError) as caught:
        load_config([], {"AZURE_ENDPOINT": url})
    message = str(caught.value)
    assert message.startswith("AZURE_ENDPOINT still holds the placeholder %r" % placeholder), message
    assert "/openai/v1" in message and "Azure portal" in message and "\n" not in message


REAL = [
    "https://contoso-eastus.openai.azure.com/openai/v1",
    "https://name.openai.azure.com/openai/v1",  # lower case: a resource may be called that
    "https://my-name.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
    "https://x1.openai.azure.com/openai/deployments/name/chat/completions",
    "https://api.openai.com/v1",
    "https://api.deepseek.com/v1",
    "http://127.0.0.1:1234/v1",
    "http://[::1]:8080/v1",
    "http://localhost:8080/v1",
    "http://nonexistent.invalid:9/v1",  # refused by the resolver at the first request, not here
    "http://file.test/v1",
    "https://examples.com/v1",
    "https://yourself.example-corp.net/v1",
    "https://gw.corp.net/v1?api-version=2024-10-21&deployment=NAMED",
]


@pytest.mark.parametrize("url", REAL)
def test_real_endpoints_are_not_placeholders(url):
    assert placeholder_in(url) is None
    assert load_config([], {"AZURE_ENDPOINT": url}).endpoint == url


def test_the_env_example_as_copied_is_refused_at_start_up(tmp_path):
    """README's quick start, without filling in .env: python proxy.py says what to put there."""
    for name in ("proxy.py", ".env.example"):
        shutil.copy(os.path.join(HERE, name), str(tmp_path / name))
    shutil.copytree(os.path.join(HERE, "retry_shield"), str(tmp_path / "retry_shield"))
    shutil.copy(str(tmp_path / ".env.example"), str(tmp_path / ".env"))
    env = {key: value for key, value in os.environ.items() if key not in NAMES}
    result = subprocess.run([sys.executable, "proxy.py", "--port", "0"], cwd=str(tmp_path), env=env,
                            capture_output=True, text=True, timeout=30)
    assert_one_line_error(result.returncode, result.stderr, "AZURE_ENDPOINT still holds the placeholder",
                          "YOUR-RESOURCE")
    assert result.stdout == ""


# ---------------------------------------------------------------------------
# An Azure host without a path
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "https://contoso.openai.azure.com", "https://contoso.openai.azure.com/", "https://contoso.openai.azure.com/openai",
    "https://contoso.cognitiveservices.azure.com/", "https://contoso.openai.azure.com?api-version=2024-10-21",
])
def test_an_azure_host_without_a_path_gets_a_warning_with_the_two_forms_that_work(url):
    warnings = config_warnings(load_config([], {"AZURE_ENDPOINT": url}))
    assert len(warnings) == 1, warnings
    host = url.split("/")[2].split("?")[0]
    warning = warnings[0]
    assert warning.startswith("AZURE_ENDPOINT=https://%s" % host)
    assert "https://%s/openai/v1" % host in warning
    assert "https://%s/openai/deployments/DEPLOYMENT/chat/completions?api-version=" % host in warning


@pytest.mark.parametrize("url", [
    "https://contoso.openai.azure.com/openai/v1", "https://contoso.openai.azure.com/openai/v1/",
    "https://contoso.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
    "https://api.openai.com/v1", "http://127.0.0.1:1234/v1", "http://127.0.0.1:1234",
])
def test_endpoints_with_a_path_or_not_azure_get_no_path_warning(url):
    assert config_warnings(load_config([], {"AZURE_ENDPOINT": url})) == []


# ---------------------------------------------------------------------------
# Misspelled keys in .env
# ---------------------------------------------------------------------------

def env_file_of(keys, path="/somewhere/.env", given=True):
    return EnvFile(path, True, tuple(keys), given)


def test_a_misspelled_required_setting_is_named_instead_of_it_not_being_set():
    with pytest.raises(ConfigError) as caught:
        load_config([], {"AZURE_ENDPONT": ENDPOINT}, env_file_of(["AZURE_ENDPONT"], given=False))
    assert str(caught.value) == "AZURE_ENDPONT in .env is not a setting; did you mean AZURE_ENDPOINT?"


@pytest.mark.parametrize("key, name", [
    ("MAX_RETRES", "MAX_RETRIES"), ("AZURE_APIKEY", "AZURE_API_KEY"), ("PORTS", "PORT"), ("LOGLEVEL", "LOG_LEVEL"),
    ("azure_endpoint", "AZURE_ENDPOINT"), ("FORCE_MODEL", "FORCED_MODEL"), ("AZURE_OPENAI_ENDPOINT", "AZURE_ENDPOINT"),
    ("AZURE_OPENAI_API_KEY", "AZURE_API_KEY"),  # README names these
])
def test_a_misspelled_setting_stops_start_up_when_the_setting_is_then_missing(key, name):
    environ = {"AZURE_ENDPOINT": ENDPOINT, key: "1"}
    if name == "AZURE_ENDPOINT":
        environ = {key: ENDPOINT}
    with pytest.raises(ConfigError) as caught:
        load_config([], environ, env_file_of([key], path="/x/my.env"))
    assert str(caught.value) == "%s in /x/my.env is not a setting; did you mean %s?" % (key, name)


def test_a_misspelled_setting_beside_the_real_one_is_a_warning():
    keys = ["AZURE_ENDPOINT", "MAX_RETRIES", "MAX_RETRES"]
    config = load_config([], {"AZURE_ENDPOINT": ENDPOINT, "MAX_RETRIES": "2", "MAX_RETRES": "3"},
                         env_file_of(keys, given=False))
    assert config.max_retries == 2
    assert config_warnings(config) == [
        "MAX_RETRES in .env is not a setting; did you mean MAX_RETRIES? (MAX_RETRIES is set, so MAX_RETRES "
        "is ignored)"]


def test_a_flag_counts_as_the_setting_being_there():
    config = load_config(["--port", "0"], {"AZURE_ENDPOINT": ENDPOINT}, env_file_of(["PORTS"]))
    assert config.port == 0 and any("PORTS in" in warning for warning in config_warnings(config))


@pytest.mark.parametrize("key", [
    "OPENAI_API_KEY", "API_KEY", "CLIENT_EXECUTABLE", "CLIENT_CONFIG_DIR", "SHIELD_LOG", "SHIELD_START_TIMEOUT",
    "CODEX_HOME", "RETRY_SHIELD_API_KEY", "OPENAI_BASE_URL", "HTTPS_PROXY", "NO_PROXY", "PATH", "HOME",
    "AZURE_DEPLOYMENT", "AZURE_API_VERSION", "PYTHON", "MODEL", "DEBUG",
])
def test_other_programs_variables_are_not_taken_for_settings(key):
    config = load_config([], {"AZURE_ENDPOINT": ENDPOINT}, env_file_of(["AZURE_ENDPOINT", key]))
    assert config_warnings(config) == []


def test_misspelled_keys_are_read_through_python_dotenv(environ, tmp_path, taken_port, capsys):
    """``export``, quotes and comments are python-dotenv's syntax: the key is AZURE_ENDPONT, whatever the form."""
    env_file = tmp_path / ".env"
    env_file.write_text("# the endpoint\nexport AZURE_ENDPONT='%s'  # typo\nPORT=%d\n" % (ENDPOINT, taken_port))
    code, _, err = main_in_process(["--env-file", str(env_file)], capsys)
    assert_one_line_error(code, err, "AZURE_ENDPONT in %s is not a setting; did you mean AZURE_ENDPOINT?" % env_file)
    assert "is not set" not in err


# ---------------------------------------------------------------------------
# No .env at all, and flags named as flags
# ---------------------------------------------------------------------------

def test_no_env_file_and_no_endpoint_names_the_path_looked_for(environ, tmp_path, monkeypatch, capsys):
    missing = str(tmp_path / ".env")
    monkeypatch.setattr(retry_shield.main, "DEFAULT_ENV_FILE", missing)
    code, _, err = main_in_process(["--port", "0"], capsys)
    assert_one_line_error(code, err, "AZURE_ENDPOINT is not set", "no .env at %s" % missing, ".env.example")


def test_no_env_file_beside_the_script_for_real(tmp_path):
    shutil.copy(os.path.join(HERE, "proxy.py"), str(tmp_path / "proxy.py"))
    shutil.copytree(os.path.join(HERE, "retry_shield"), str(tmp_path / "retry_shield"))
    env = {key: value for key, value in os.environ.items() if key not in NAMES}
    result = subprocess.run([sys.executable, str(tmp_path / "proxy.py")], cwd=str(tmp_path.parent), env=env,
                            capture_output=True, text=True, timeout=30)
    assert_one_line_error(result.returncode, result.stderr, "no .env at %s" % (tmp_path / ".env"))


@pytest.mark.parametrize("argv, text", [
    (["--port", "abc"], "--port 'abc' is not a port"),
    (["--port", "70000"], "--port '70000' is not a port"),
    (["--host", "0.0.0.0"], "--host 0.0.0.0 is reachable from other machines"),
])
def test_a_bad_flag_is_named_as_the_flag(argv, text, environ, tmp_path, capsys):
    environ.update({"AZURE_ENDPOINT": ENDPOINT})
    code, _, err = main_in_process(["--env-file", os.devnull] + argv, capsys)
    assert_one_line_error(code, err, text)
    assert "PORT=" not in err and "HOST=" not in err


def test_a_port_in_use_given_as_a_flag_is_named_as_the_flag(environ, taken_port, capsys):
    environ.update({"AZURE_ENDPOINT": ENDPOINT})
    code, _, err = main_in_process(["--env-file", os.devnull, "--port", str(taken_port)], capsys)
    assert_one_line_error(code, err, "port %d" % taken_port, "already in use", "--port")
    assert "PORT" not in err


def test_an_address_it_cannot_listen_on_given_as_a_flag_is_named_as_the_flag(environ, capsys):
    environ.update({"AZURE_ENDPOINT": ENDPOINT, "PROXY_API_KEY": "a-long-proxy-key"})
    code, _, err = main_in_process(["--env-file", os.devnull, "--host", "203.0.113.7", "--port", "0"], capsys)
    assert_one_line_error(code, err, "cannot listen on 203.0.113.7", "--host")
    assert "HOST" not in err


# ---------------------------------------------------------------------------
# python-dotenv missing, with settings in .env
# ---------------------------------------------------------------------------

def test_without_python_dotenv_the_unread_env_file_is_the_error(tmp_path):
    hidden = tmp_path / "no-dotenv" / "dotenv"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('python-dotenv hidden by the test')\n")
    env_file = tmp_path / ".env"
    env_file.write_text("AZURE_ENDPOINT=%s\nPORT=0\n" % ENDPOINT)
    env = {key: value for key, value in os.environ.items() if key not in NAMES}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hidden.parent), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, proxy.__file__, "--env-file", str(env_file)], env=env,
                            capture_output=True, text=True, timeout=30)
    assert_one_line_error(result.returncode, result.stderr)
    line = result.stderr[len("proxy.py: error: "):]
    assert line.startswith("python-dotenv is not installed, so .env (%s) was not read: pip install -r "
                           "requirements.txt" % env_file), line
    assert line.endswith("; from the environment alone, AZURE_ENDPOINT is not set\n"), line
