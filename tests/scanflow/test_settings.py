"""scanflow.settings: the defaults derived from the home folder, parsing of the environment
(SCANFLOW_*), validation errors that never echo a secret, the input roots as the access check
sees them, and the environment handed to processes that talk to the local server.

Settings are read from the real process environment (monkeypatched per test); nothing is
mocked. The roots' JSON / comma forms, typos and a linked root are in tests/scanflow/
test_access.py and are not repeated here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from scanflow.settings import REPO_ROOT, Settings, prefect_client_env


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No SCANFLOW_* from the test session; the home is a fresh folder."""
    for key in list(os.environ):
        if key.startswith("SCANFLOW_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SCANFLOW_HOME", str(tmp_path))
    return monkeypatch


def test_the_default_home_is_the_repositorys_dot_scanflow(env: pytest.MonkeyPatch) -> None:
    env.delenv("SCANFLOW_HOME")
    assert Settings().home == REPO_ROOT / ".scanflow"


def test_state_defaults_to_folders_of_the_home(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = Settings()
    assert s.results_root == (tmp_path / "results").as_uri()
    assert s.scratch_dir == tmp_path / "work"
    assert s.models_dir == tmp_path / "models"
    assert s.database_url == f"sqlite+aiosqlite:///{tmp_path / 'prefect' / 'prefect.db'}"
    assert s.api_url == "http://127.0.0.1:4200/api"
    assert s.ui_url == "http://127.0.0.1:4200"
    assert s.server_auth is None and s.input_roots is None
    assert s.slack_events == ["scan.failed", "scan.crashed", "scan.stalled"]


def test_a_relative_home_still_gives_absolute_uris(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.chdir(tmp_path)
    env.setenv("SCANFLOW_HOME", "state")
    s = Settings()
    assert s.results_root == (tmp_path / "state" / "results").as_uri()
    assert s.database_url.endswith(f":///{tmp_path / 'state' / 'prefect' / 'prefect.db'}")
    assert s.allowed_input_roots[0] == (tmp_path / "state" / "samples").as_uri()


def test_explicit_settings_replace_the_derived_ones(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env.setenv("SCANFLOW_RESULTS_URI", "s3://results-bucket/scans")
    env.setenv("SCANFLOW_WORK_DIR", str(tmp_path / "scratch"))
    env.setenv("SCANFLOW_MODEL_CACHE_DIR", str(tmp_path / "cache"))
    env.setenv("SCANFLOW_SERVER_HOST", "0.0.0.0")
    env.setenv("SCANFLOW_SERVER_PORT", "4321")
    env.setenv("SCANFLOW_DATABASE", "postgres")
    env.setenv("SCANFLOW_POSTGRES_URL", "postgresql+asyncpg://u@db:5432/x")
    env.setenv("SCANFLOW_SLACK_EVENTS", '["scan.rejected"]')
    s = Settings()
    assert s.results_root == "s3://results-bucket/scans"
    assert s.scratch_dir == tmp_path / "scratch"
    assert s.models_dir == tmp_path / "cache"
    assert s.api_url == "http://0.0.0.0:4321/api"
    assert s.database_url == "postgresql+asyncpg://u@db:5432/x"
    assert s.slack_events == ["scan.rejected"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SERVER_PORT", "0"),
        ("SERVER_PORT", "65536"),
        ("CPU_THREADS", "0"),
        ("DATABASE", "mysql"),
        ("HEARTBEAT_GRACE_S", "30"),  # under the 30 s heartbeat plus slack
        ("CRASH_RETRIES", "4"),
        ("WORKER_QUERY_SECONDS", "0"),
        ("PREFECT_PLATFORM", "aws"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_setting(
    env: pytest.MonkeyPatch, name: str, value: str
) -> None:
    env.setenv(f"SCANFLOW_{name}", value)
    with pytest.raises(ValidationError) as err:
        Settings()
    assert name.lower() in str(err.value)


# -- input roots ---------------------------------------------------------------------------


def test_roots_may_be_separated_by_commas_spaces_and_newlines(env: pytest.MonkeyPatch) -> None:
    env.setenv("SCANFLOW_INPUT_ROOTS", " s3://a-bucket/p ,s3://b-bucket\n\tfile:///srv/scans ")
    assert Settings().input_roots == ["s3://a-bucket/p", "s3://b-bucket", "file:///srv/scans"]


def test_blank_roots_mean_the_default_roots(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("SCANFLOW_INPUT_ROOTS", "   ")
    s = Settings()
    assert s.input_roots is None
    assert s.allowed_input_roots == [
        (tmp_path / "samples").as_uri(),
        (tmp_path / "uploads").as_uri(),
    ]


def test_a_bad_root_in_a_json_list_fails_at_start_naming_it(env: pytest.MonkeyPatch) -> None:
    env.setenv("SCANFLOW_INPUT_ROOTS", '["s3://good-bucket/p", "gs://elsewhere/p"]')
    with pytest.raises(ValidationError, match="gs://elsewhere/p"):
        Settings()


def test_default_roots_are_under_the_real_home(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "real-home").mkdir()
    (tmp_path / "home-link").symlink_to(tmp_path / "real-home")
    env.setenv("SCANFLOW_HOME", str(tmp_path / "home-link"))
    real = (tmp_path / "real-home").resolve()
    assert Settings().allowed_input_roots == [
        (real / "samples").as_uri(),
        (real / "uploads").as_uri(),
    ]


def test_only_linked_file_roots_gain_their_real_path(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real = (tmp_path / "real").resolve()
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    roots = ["s3://uploads/patients", real.as_uri() + "/", (tmp_path / "link").as_uri()]
    env.setenv("SCANFLOW_INPUT_ROOTS", ",".join(roots))
    # an S3 root and a file root that is its own real path are listed once, as given
    assert Settings().allowed_input_roots == [*roots, real.as_uri()]


# -- secrets -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["only-a-token-Zq81x", ":pw-Zq81x", "admin-Zq81x:"])
def test_a_malformed_server_auth_is_refused_without_echoing_it(
    env: pytest.MonkeyPatch, value: str
) -> None:
    env.setenv("SCANFLOW_SERVER_AUTH", value)
    with pytest.raises(ValidationError) as err:
        Settings()
    text = str(err.value)  # what a traceback or a log shows
    assert "server_auth" in text and "user:password" in text
    assert "Zq81x" not in text


def test_no_bad_value_is_echoed_in_a_validation_error(env: pytest.MonkeyPatch) -> None:
    env.setenv("SCANFLOW_SERVER_PORT", "port-Zq81x")
    env.setenv("SCANFLOW_NOTIFY_TIMEOUT_S", "Zq81x")
    with pytest.raises(ValidationError) as err:
        Settings()
    assert "server_port" in str(err.value) and "notify_timeout_s" in str(err.value)
    assert "Zq81x" not in str(err.value)


def test_secrets_are_kept_but_never_shown(env: pytest.MonkeyPatch) -> None:
    env.setenv("SCANFLOW_SERVER_AUTH", "admin:pass:with:colons-Zq81x")
    env.setenv("SCANFLOW_PLATFORM_SIGNING_SECRET", "whsec-Zq81x")
    env.setenv("SCANFLOW_SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T/B/Zq81x")
    s = Settings()
    assert s.server_auth is not None
    assert s.server_auth.get_secret_value() == "admin:pass:with:colons-Zq81x"
    assert "Zq81x" not in repr(s) and "Zq81x" not in str(s.model_dump())


# -- Prefect -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("platform", "url", "cloud"),
    [
        ("auto", "https://api.prefect.cloud/api/accounts/a/workspaces/w", True),
        ("auto", "http://127.0.0.1:4200/api", False),
        ("cloud", "http://127.0.0.1:4200/api", True),  # a stand-in for Cloud (rehearsal)
        ("server", "https://api.prefect.cloud/api/accounts/a/workspaces/w", False),
    ],
)
def test_on_prefect_cloud_follows_the_url_unless_told(
    env: pytest.MonkeyPatch, platform: str, url: str, cloud: bool
) -> None:
    env.setenv("SCANFLOW_PREFECT_PLATFORM", platform)
    assert Settings().on_prefect_cloud(url) is cloud


def test_the_client_environment_points_at_this_server(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env.setenv("SCANFLOW_SERVER_PORT", "4999")
    env.setenv("PREFECT_API_URL", "http://elsewhere:1/api")
    env.delenv("PREFECT_HOME", raising=False)
    env.delenv("PREFECT_API_AUTH_STRING", raising=False)
    env.setenv("UNRELATED_VARIABLE", "kept")
    before = dict(os.environ)
    out = prefect_client_env(Settings())
    assert out["PREFECT_API_URL"] == "http://127.0.0.1:4999/api"
    assert out["PREFECT_HOME"] == str(tmp_path / "prefect")
    assert out["SCANFLOW_HOME"] == str(tmp_path)
    assert out["UNRELATED_VARIABLE"] == "kept"
    assert "PREFECT_API_AUTH_STRING" not in out
    assert dict(os.environ) == before  # a copy: this process's environment is untouched


def test_the_client_environment_keeps_a_chosen_prefect_home_and_sends_the_auth(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env.setenv("PREFECT_HOME", str(tmp_path / "own-prefect-home"))
    env.setenv("SCANFLOW_SERVER_AUTH", "ops:s3cret")
    out = prefect_client_env(Settings())
    assert out["PREFECT_HOME"] == str(tmp_path / "own-prefect-home")
    assert out["PREFECT_API_AUTH_STRING"] == "ops:s3cret"
    assert "PREFECT_SERVER_API_AUTH_STRING" not in out  # that one is the server's


def test_the_code_version_is_the_package_and_commit_unless_set(env: pytest.MonkeyPatch) -> None:
    commit = r"\+g[0-9a-f]{12}(\.dirty)?" if (REPO_ROOT / ".git").exists() else ""
    assert re.fullmatch(r"[0-9][\w.]*" + commit, Settings().resolved_code_version())
    env.setenv("SCANFLOW_CODE_VERSION", "2.0.0+ci.7")
    assert Settings().resolved_code_version() == "2.0.0+ci.7"
