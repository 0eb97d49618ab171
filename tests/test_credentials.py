"""The credential chain: config, then environment, then the credentials INI file."""

from __future__ import annotations

from pathlib import Path

import pytest

from poller.config import CredentialsConfig
from poller.core.errors import ConfigError, CredentialsNotFound
from poller.wire.credentials import mask, resolve_credentials
from poller.wire.signing import SigningCredentials

SECRET = "Sup3rS3cretValue-DoNotLeak"
TOKEN = "STS-T0ken-DoNotLeak"
NONE = CredentialsConfig()


def ini(tmp_path: Path, text: str, name: str = "credentials.ini") -> Path:
    path = tmp_path / name
    path.write_text(text, "utf-8")
    return path


def assert_no_secret(text: str) -> None:
    assert SECRET not in text
    assert TOKEN not in text


def resolve_error(
    config: CredentialsConfig, environ: dict[str, str], home: Path
) -> pytest.ExceptionInfo[ConfigError]:
    with pytest.raises(ConfigError) as info:
        resolve_credentials(config, environ, home)
    assert_no_secret(str(info.value))
    assert_no_secret(repr(info.value))
    return info


# ----------------------------------------------------------------------------------------------
# Config and environment


def test_config_wins_over_env(tmp_path: Path) -> None:
    env = {
        "ALIBABA_CLOUD_ACCESS_KEY_ID": "ENV-ID",
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "env-secret",
        "ALIBABA_CLOUD_CREDENTIALS_FILE": str(ini(tmp_path, "[default]\n")),
    }
    creds = resolve_credentials(
        CredentialsConfig(access_key_id="CFG-ID", access_key_secret=SECRET), env, tmp_path
    )
    assert creds == SigningCredentials("CFG-ID", SECRET, None, provider_name="static_ak")


def test_config_with_token(tmp_path: Path) -> None:
    creds = resolve_credentials(
        CredentialsConfig(access_key_id="CFG-ID", access_key_secret=SECRET, security_token=TOKEN),
        {},
        tmp_path,
    )
    assert creds == SigningCredentials("CFG-ID", SECRET, TOKEN, provider_name="static_sts")
    assert_no_secret(repr(creds))
    assert "CFG-ID" in repr(creds)


def test_env_without_token(tmp_path: Path) -> None:
    env = {"ALIBABA_CLOUD_ACCESS_KEY_ID": "ENV-ID", "ALIBABA_CLOUD_ACCESS_KEY_SECRET": SECRET}
    creds = resolve_credentials(NONE, env, tmp_path)
    assert creds == SigningCredentials("ENV-ID", SECRET, None, provider_name="default/env")
    assert_no_secret(repr(creds))


def test_env_with_token(tmp_path: Path) -> None:
    env = {
        "ALIBABA_CLOUD_ACCESS_KEY_ID": "ENV-ID",
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": SECRET,
        "ALIBABA_CLOUD_SECURITY_TOKEN": TOKEN,
    }
    creds = resolve_credentials(NONE, env, tmp_path)
    assert creds == SigningCredentials("ENV-ID", SECRET, TOKEN, provider_name="default/env")
    assert_no_secret(repr(creds))


def test_env_values_are_stripped(tmp_path: Path) -> None:
    env = {
        "ALIBABA_CLOUD_ACCESS_KEY_ID": " ENV-ID\n",
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": f"{SECRET} ",
        "ALIBABA_CLOUD_SECURITY_TOKEN": "  ",
    }
    creds = resolve_credentials(NONE, env, tmp_path)
    assert (creds.access_key_id, creds.access_key_secret, creds.security_token) == (
        "ENV-ID",
        SECRET,
        None,
    )


def test_env_wins_over_file(tmp_path: Path) -> None:
    path = ini(tmp_path, "[default]\naccess_key_id = FILE-ID\naccess_key_secret = file-secret\n")
    env = {
        "ALIBABA_CLOUD_ACCESS_KEY_ID": "ENV-ID",
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": SECRET,
        "ALIBABA_CLOUD_CREDENTIALS_FILE": str(path),
    }
    assert resolve_credentials(NONE, env, tmp_path).access_key_id == "ENV-ID"


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({"ALIBABA_CLOUD_ACCESS_KEY_ID": "ENV-ID"}, "ALIBABA_CLOUD_ACCESS_KEY_SECRET"),
        ({"ALIBABA_CLOUD_ACCESS_KEY_SECRET": SECRET}, "ALIBABA_CLOUD_ACCESS_KEY_ID"),
        (
            {"ALIBABA_CLOUD_ACCESS_KEY_SECRET": SECRET, "ALIBABA_CLOUD_SECURITY_TOKEN": TOKEN},
            "ALIBABA_CLOUD_ACCESS_KEY_ID",
        ),
    ],
)
def test_env_with_only_one_half(tmp_path: Path, env: dict[str, str], missing: str) -> None:
    # Even with a usable file, a half-set environment is an error rather than silently ignored.
    path = ini(tmp_path, "[default]\naccess_key_id = FILE-ID\naccess_key_secret = file-secret\n")
    env = {**env, "ALIBABA_CLOUD_CREDENTIALS_FILE": str(path)}
    info = resolve_error(NONE, env, tmp_path)
    assert missing in str(info.value)
    assert not isinstance(info.value, CredentialsNotFound)


def test_half_config_falls_through_to_env(tmp_path: Path) -> None:
    env = {"ALIBABA_CLOUD_ACCESS_KEY_ID": "ENV-ID", "ALIBABA_CLOUD_ACCESS_KEY_SECRET": SECRET}
    creds = resolve_credentials(CredentialsConfig(access_key_id="CFG-ID"), env, tmp_path)
    assert creds.access_key_id == "ENV-ID"


# ----------------------------------------------------------------------------------------------
# Credentials file


def test_file_default_profile(tmp_path: Path) -> None:
    path = ini(
        tmp_path,
        "[default]\ntype = access_key\naccess_key_id = FILE-ID\n"
        f"access_key_secret = {SECRET}\n\n[other]\naccess_key_id = X\naccess_key_secret = y\n",
    )
    creds = resolve_credentials(NONE, {"ALIBABA_CLOUD_CREDENTIALS_FILE": str(path)}, tmp_path)
    assert creds == SigningCredentials("FILE-ID", SECRET, None, provider_name="profile/static_ak")
    assert_no_secret(repr(creds))


def test_file_named_profile(tmp_path: Path) -> None:
    path = ini(
        tmp_path,
        "[default]\naccess_key_id = DEFAULT-ID\naccess_key_secret = d\n\n"
        f"[prod]\naccess_key_id = PROD-ID\naccess_key_secret = {SECRET}\n",
    )
    env = {"ALIBABA_CLOUD_CREDENTIALS_FILE": str(path), "ALIBABA_CLOUD_PROFILE": "prod"}
    creds = resolve_credentials(NONE, env, tmp_path)
    assert (creds.access_key_id, creds.access_key_secret) == ("PROD-ID", SECRET)
    assert creds.provider_name == "profile/static_ak"


def test_file_inline_comments_are_stripped(tmp_path: Path) -> None:
    path = ini(
        tmp_path,
        "# the team's key\n[default]\n"
        "type = access_key   # only kind supported\n"
        "access_key_id = FILE-ID # rotated monthly\n"
        f"access_key_secret = {SECRET}\t# keep safe\n",
    )
    creds = resolve_credentials(NONE, {"ALIBABA_CLOUD_CREDENTIALS_FILE": str(path)}, tmp_path)
    assert (creds.access_key_id, creds.access_key_secret) == ("FILE-ID", SECRET)


def test_default_path_under_home(tmp_path: Path) -> None:
    folder = tmp_path / ".alibabacloud"
    folder.mkdir()
    ini(folder, f"[default]\naccess_key_id = HOME-ID\naccess_key_secret = {SECRET}\n")
    creds = resolve_credentials(NONE, {}, tmp_path)
    assert (creds.access_key_id, creds.access_key_secret) == ("HOME-ID", SECRET)
    assert creds.provider_name == "profile/static_ak"


def test_profile_env_applies_to_default_path(tmp_path: Path) -> None:
    folder = tmp_path / ".alibabacloud"
    folder.mkdir()
    ini(folder, "[dev]\naccess_key_id = DEV-ID\naccess_key_secret = s\n")
    creds = resolve_credentials(NONE, {"ALIBABA_CLOUD_PROFILE": "dev"}, tmp_path)
    assert creds.access_key_id == "DEV-ID"


def test_unsupported_type(tmp_path: Path) -> None:
    path = ini(
        tmp_path,
        f"[default]\ntype = ecs_ram_role\naccess_key_id = X\naccess_key_secret = {SECRET}\n",
    )
    info = resolve_error(NONE, {"ALIBABA_CLOUD_CREDENTIALS_FILE": str(path)}, tmp_path)
    message = str(info.value)
    assert "ecs_ram_role" in message
    assert "default.type" in message
    assert str(path) in message


def test_missing_profile_section(tmp_path: Path) -> None:
    path = ini(tmp_path, f"[default]\naccess_key_id = X\naccess_key_secret = {SECRET}\n")
    env = {"ALIBABA_CLOUD_CREDENTIALS_FILE": str(path), "ALIBABA_CLOUD_PROFILE": "staging"}
    info = resolve_error(NONE, env, tmp_path)
    assert "[staging]" in str(info.value)
    assert str(path) in str(info.value)


def test_missing_default_section(tmp_path: Path) -> None:
    path = ini(tmp_path, f"[prod]\naccess_key_id = X\naccess_key_secret = {SECRET}\n")
    info = resolve_error(NONE, {"ALIBABA_CLOUD_CREDENTIALS_FILE": str(path)}, tmp_path)
    assert "[default]" in str(info.value)


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (f"access_key_secret = {SECRET}\n", "prod.access_key_id"),
        (f"access_key_id =\naccess_key_secret = {SECRET}\n", "prod.access_key_id"),
        ("access_key_id = PROD-ID\n", "prod.access_key_secret"),
        ("access_key_id = PROD-ID\naccess_key_secret =   # later\n", "prod.access_key_secret"),
    ],
)
def test_missing_key_names_profile_and_key(tmp_path: Path, body: str, key: str) -> None:
    path = ini(tmp_path, f"[prod]\n{body}")
    env = {"ALIBABA_CLOUD_CREDENTIALS_FILE": str(path), "ALIBABA_CLOUD_PROFILE": "prod"}
    info = resolve_error(NONE, env, tmp_path)
    assert f"'{key}'" in str(info.value)
    assert str(path) in str(info.value)


def test_credentials_file_env_points_to_missing_file(tmp_path: Path) -> None:
    # A default file exists, but the explicit variable wins and its file is missing.
    folder = tmp_path / ".alibabacloud"
    folder.mkdir()
    ini(folder, "[default]\naccess_key_id = HOME-ID\naccess_key_secret = s\n")
    missing = tmp_path / "elsewhere.ini"
    info = resolve_error(NONE, {"ALIBABA_CLOUD_CREDENTIALS_FILE": str(missing)}, tmp_path)
    assert str(missing) in str(info.value)
    assert "ALIBABA_CLOUD_CREDENTIALS_FILE" in str(info.value)


def test_nothing_anywhere(tmp_path: Path) -> None:
    with pytest.raises(CredentialsNotFound) as info:
        resolve_credentials(NONE, {}, tmp_path)
    message = str(info.value)
    assert "ALIBABA_CLOUD_ACCESS_KEY_ID" in message
    assert str(tmp_path / ".alibabacloud" / "credentials.ini") in message
    assert info.value.fatal
    assert isinstance(info.value, ConfigError)


def test_empty_env_values_count_as_unset(tmp_path: Path) -> None:
    env = {"ALIBABA_CLOUD_ACCESS_KEY_ID": "", "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "  "}
    with pytest.raises(CredentialsNotFound):
        resolve_credentials(NONE, env, tmp_path)


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "binary.ini"
    path.write_bytes(b"[default]\naccess_key_id = \xff\xfe\n")
    info = resolve_error(NONE, {"ALIBABA_CLOUD_CREDENTIALS_FILE": str(path)}, tmp_path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(f"[default]\naccess_key_id = AKID\naccess_key_secret {SECRET}\n", id="no-="),
        pytest.param(f"access_key_secret = {SECRET}\n[default]\n", id="no-section-header"),
    ],
)
def test_malformed_file_error_does_not_leak_secret(tmp_path: Path, text: str) -> None:
    path = ini(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        resolve_credentials(NONE, {"ALIBABA_CLOUD_CREDENTIALS_FILE": str(path)}, tmp_path)
    assert str(path) in str(info.value)
    assert SECRET not in str(info.value)
    assert SECRET not in str(info.value.__cause__ or "")


def test_mask() -> None:
    assert mask(SECRET) == "****"
    assert mask("") == "(unset)"
    assert mask(None) == "(unset)"
