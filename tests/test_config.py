"""Loading and validating the TOML configuration (poller.config)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytest
import trustme

from poller.config import (
    ApiConfig,
    CredentialsConfig,
    DaemonConfig,
    LimitsConfig,
    PollerConfig,
    RetryConfig,
    SinkConfig,
    SweepConfig,
    TargetConfig,
    load_config,
    parse_config,
    split_endpoint,
)
from poller.core.errors import ConfigError

FULL = """\
[api]
endpoint = "127.0.0.1:8780"
protocol = "http"
signature = "v1"
timeout_s = 7.5
connect_timeout_s = 2
user_agent = "poller-test/1.0"
verify_tls = false

[credentials]
access_key_id = "LTAI-test-id"
access_key_secret = "test-secret"
security_token = "test-token"

[limits]
qps = 50
max_in_flight = 8
window_margin_ms = 0
adaptive = false

[retry]
max_attempts = 6
backoff_base_s = 0.25
backoff_cap_s = 3.0
throttle_backoff_base_s = 0.5
budget_ratio = 0.1
budget_min_tokens = 5

[sweep]
dedupe = false
deadline_s = 60.0
queue_size = 16
max_uid_bytes = 64

[daemon]
interval_s = 15
emit = "all"

[[targets]]
app_id = "app-a"
group_id = "group-a"
uids_file = "lists/uids.txt"

[[targets]]
app_id = "app-a"
group_id = "group-b"
uids = ["u1", "用户2", "e f"]

[[targets]]
app_id = "app-b"
group_id = "group-a"
uids_file = "/abs/uids.txt"

[[sinks]]
kind = "file"
path = "out/presence.jsonl"
fsync = true

[[sinks]]
kind = "stdout"
"""


def write(tmp_path: Path, text: str, name: str = "poller.toml") -> Path:
    folder = tmp_path / "conf"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(text, "utf-8")
    return path


def test_full_config_round_trip(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    cfg = load_config(path)
    folder = path.parent
    assert cfg == PollerConfig(
        api=ApiConfig(
            endpoint="127.0.0.1:8780",
            protocol="http",
            signature="v1",
            timeout_s=7.5,
            connect_timeout_s=2.0,
            user_agent="poller-test/1.0",
            verify_tls=False,
        ),
        credentials=CredentialsConfig(
            access_key_id="LTAI-test-id",
            access_key_secret="test-secret",
            security_token="test-token",
        ),
        limits=LimitsConfig(qps=50.0, max_in_flight=8, window_margin_ms=0.0, adaptive=False),
        retry=RetryConfig(
            max_attempts=6,
            backoff_base_s=0.25,
            backoff_cap_s=3.0,
            throttle_backoff_base_s=0.5,
            budget_ratio=0.1,
            budget_min_tokens=5.0,
        ),
        sweep=SweepConfig(dedupe=False, deadline_s=60.0, queue_size=16, max_uid_bytes=64),
        daemon=DaemonConfig(interval_s=15.0, emit="all"),
        targets=(
            TargetConfig(
                app_id="app-a", group_id="group-a", uids_file=folder / "lists" / "uids.txt"
            ),
            TargetConfig(app_id="app-a", group_id="group-b", uids=("u1", "用户2", "e f")),
            TargetConfig(app_id="app-b", group_id="group-a", uids_file=Path("/abs/uids.txt")),
        ),
        sinks=(
            SinkConfig(kind="file", path=folder / "out" / "presence.jsonl", fsync=True),
            SinkConfig(kind="stdout"),
        ),
        source=str(path),
    )
    assert cfg.api.base_url == "http://127.0.0.1:8780/"
    # ints given for float keys come out as floats
    assert isinstance(cfg.limits.qps, float)
    assert isinstance(cfg.daemon.interval_s, float)
    # relative paths are resolved against the config's folder, not the working directory
    assert cfg.targets[0].uids_file is not None and cfg.targets[0].uids_file.is_absolute()


def test_secrets_not_in_repr(tmp_path: Path) -> None:
    text = repr(load_config(write(tmp_path, FULL)))
    assert "test-secret" not in text
    assert "test-token" not in text


def test_empty_config_gives_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    assert cfg == PollerConfig(source=cfg.source)
    assert cfg.api.base_url == "https://live.aliyuncs.com/"
    assert cfg.limits.qps == 100.0
    assert cfg.limits.max_in_flight == 64
    assert cfg.retry.max_attempts == 4
    assert cfg.daemon.emit == "changes"
    assert cfg.targets == ()
    assert cfg.sinks == ()


def test_parse_config_without_base_dir_keeps_relative_paths() -> None:
    cfg = parse_config(
        {
            "targets": [{"app_id": "a", "group_id": "g", "uids_file": "u.txt"}],
            "sinks": [{"kind": "file", "path": "o.jsonl"}],
        }
    )
    assert cfg.targets[0].uids_file == Path("u.txt")
    assert cfg.sinks[0].path == Path("o.jsonl")


@pytest.mark.parametrize(
    ("toml", "key", "fragment"),
    [
        ('[limits]\nqps = "fast"', "limits.qps", "expected float"),
        ("[limits]\nmax_in_flight = 2.5", "limits.max_in_flight", "expected int"),
        ("[api]\nendpont = 'x'", "api.endpont", "unknown key"),
        ("[apii]\nendpoint = 'x'", "apii", "unknown section"),
        ("[[targets]]\ngroup_id = 'g'", "targets[0].app_id", "required"),
        ("[[targets]]\napp_id = 'a'", "targets[0].group_id", "required"),
        ("[[targets]]\napp_id = ''\ngroup_id = 'g'", "targets[0].app_id", "required"),
        (
            "[[targets]]\napp_id = 'a'\ngroup_id = 'g'\nuids = ['u1']\nuids_file = 'u.txt'",
            "targets[0].uids_file",
            "not both",
        ),
        ("[[targets]]\napp_id = 'a'\ngroup_id = 'g'\nuids = ['u1', 2]", "targets[0].uids", "2"),
        ("[[targets]]\napp_id = 'a'\ngroup_id = 'g'\nuids = 'u1,u2'", "targets[0].uids", "list"),
        ("[[targets]]\napp_id = 'a'\ngroup_id = 'g'\ncolor = 1", "targets[0].color", "unknown"),
        ("[[sinks]]\nkind = 'file'", "sinks[0].path", "required"),
        ("[[sinks]]\nkind = 'kafka'", "sinks[0].kind", "kafka"),
        ("[[sinks]]\nkind = 'stdout'\n[[sinks]]\nkind = 'file'", "sinks[1].path", "required"),
        ("[api]\nprotocol = 'ftp'", "api.protocol", "ftp"),
        ("[api]\nsignature = 'v2'", "api.signature", "v2"),
        ("[daemon]\nemit = 'some'", "daemon.emit", "some"),
        ("[limits]\nqps = -1", "limits.qps", "-1"),
        ("[limits]\nqps = 0", "limits.qps", "> 0"),
        ("[limits]\nqps = nan", "limits.qps", "nan"),
        ("[limits]\nqps = inf", "limits.qps", "inf"),
        ("[api]\ntimeout_s = 0", "api.timeout_s", "> 0"),
        ("[api]\nconnect_timeout_s = -0.5", "api.connect_timeout_s", "> 0"),
        ("[retry]\nbackoff_base_s = -0.1", "retry.backoff_base_s", ">= 0"),
        ("[retry]\nbudget_ratio = nan", "retry.budget_ratio", "nan"),
        ("[daemon]\ninterval_s = 0", "daemon.interval_s", "> 0"),
        ("[sweep]\ndeadline_s = -1", "sweep.deadline_s", ">= 0"),
        ("[limits]\nmax_in_flight = 0", "limits.max_in_flight", "between 1 and 1024"),
        ("[retry]\nmax_attempts = 0", "retry.max_attempts", ">= 1"),
        ("[sweep]\nqueue_size = 0", "sweep.queue_size", ">= 1"),
        ("[sweep]\nmax_uid_bytes = 0", "sweep.max_uid_bytes", "between"),
        ("[api]\nendpoint = 'https://live.aliyuncs.com'", "api.endpoint", "scheme"),
        ("[api]\nendpoint = 'live.aliyuncs.com/path'", "api.endpoint", "path"),
        ("[api]\nendpoint = ''", "api.endpoint", "host"),
        ("[credentials]\naccess_key_id = 'AK'", "credentials.access_key_secret", "together"),
        ("[credentials]\naccess_key_secret = 's3cr3t'", "credentials.access_key_id", "together"),
        ("[credentials]\nsecurity_token = 'tok'", "credentials.security_token", "access_key_id"),
        (
            "[[targets]]\napp_id = 'a'\ngroup_id = 'g'\nuids = []\n"
            "[[targets]]\napp_id = 'a'\ngroup_id = 'g'\nuids = []",
            "targets[1]",
            "duplicate",
        ),
        ("limits = 3", "limits", "table"),
        ("[targets]\napp_id = 'a'", "targets", "array"),
        ("sinks = [1]", "sinks[0]", "table"),
    ],
)
def test_errors_name_file_and_dotted_key(
    tmp_path: Path, toml: str, key: str, fragment: str
) -> None:
    path = write(tmp_path, toml)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert f"'{key}'" in message
    assert fragment in message
    assert info.value.fatal


def test_errors_do_not_echo_the_secret(tmp_path: Path) -> None:
    path = write(tmp_path, "[credentials]\naccess_key_secret = 'VERY-SECRET-VALUE'")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "VERY-SECRET-VALUE" not in str(info.value)


def test_validation_errors_keep_key_attribute(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\nqps = 0")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    assert info.value.key == "limits.qps"
    assert str(info.value).startswith(f"{path}, key 'limits.qps': ")


def test_type_error_has_consistent_format(tmp_path: Path) -> None:
    path = write(tmp_path, '[limits]\nqps = "fast"')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "limits.qps"
    assert info.value.source == str(path)
    assert str(info.value).startswith(f"{path}, key 'limits.qps': ")


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("limits", "max_in_flight"),
        ("retry", "max_attempts"),
        ("sweep", "queue_size"),
        ("limits", "qps"),
        ("api", "timeout_s"),
        ("daemon", "interval_s"),
    ],
)
def test_bool_not_accepted_for_numbers(section: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"'{section}\.{key}'.*bool"):
        parse_config({section: {key: True}})


@pytest.mark.parametrize(
    ("section", "key"),
    [("api", "verify_tls"), ("limits", "adaptive"), ("sweep", "dedupe")],
)
def test_number_not_accepted_for_bool(section: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"'{section}\.{key}'.*expected bool"):
        parse_config({section: {key: 1}})


def test_int_accepted_for_float_keys() -> None:
    cfg = parse_config(
        {
            "api": {"timeout_s": 3, "connect_timeout_s": 1},
            "limits": {"qps": 99, "window_margin_ms": 20},
            "retry": {"backoff_base_s": 1, "backoff_cap_s": 10, "budget_min_tokens": 0},
            "sweep": {"deadline_s": 0},
        }
    )
    values: list[Any] = [
        cfg.api.timeout_s,
        cfg.api.connect_timeout_s,
        cfg.limits.qps,
        cfg.limits.window_margin_ms,
        cfg.retry.backoff_base_s,
        cfg.retry.backoff_cap_s,
        cfg.retry.budget_min_tokens,
        cfg.sweep.deadline_s,
    ]
    assert values == [3.0, 1.0, 99.0, 20.0, 1.0, 10.0, 0.0, 0.0]
    assert all(type(v) is float for v in values)


def test_parse_config_errors_name_the_key_without_a_file() -> None:
    with pytest.raises(ConfigError, match=r"'limits\.qps'") as info:
        parse_config({"limits": {"qps": math.nan}})
    assert info.value.source is None


def test_parse_config_errors_name_given_source() -> None:
    with pytest.raises(ConfigError, match=r"^inline\.toml, key 'api\.endpont'"):
        parse_config({"api": {"endpont": "x"}}, source="inline.toml")


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits\nqps = 1")
    with pytest.raises(ConfigError, match="invalid TOML") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[api]\nuser_agent = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="UTF-8") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "poller.toml"
    with pytest.raises(ConfigError, match="cannot read config") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_unreadable_file_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config") as info:
        load_config(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_load_config_accepts_str_path(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\nqps = 20")
    assert load_config(str(path)).limits.qps == 20.0


# ----------------------------------------------------------------------------------------------
# Secrets, nested keys, the endpoint, the CA bundle


@pytest.mark.parametrize(
    ("toml", "key", "got"),
    [
        (
            '[credentials]\naccess_key_id = "AK"\naccess_key_secret = ["VERY-SECRET"]',
            "secret",
            "list",
        ),
        ('[credentials]\naccess_key_id = "AK"\nsecurity_token = 987654321012', "token", "int"),
        ("[credentials]\naccess_key_secret = { s = 'VERY-SECRET' }", "secret", "table"),
        ("[credentials]\nsecurity_token = 1987-06-05T04:03:02Z", "token", "datetime"),
    ],
)
def test_type_errors_never_echo_a_secret(tmp_path: Path, toml: str, key: str, got: str) -> None:
    path = write(tmp_path, toml)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert info.value.key is not None and info.value.key.endswith(key)
    assert message.endswith(f"expected str, got {got}")
    for leaked in ("VERY-SECRET", "987654321012", "1987"):
        assert leaked not in message


def test_type_errors_of_other_keys_show_the_value() -> None:
    with pytest.raises(ConfigError, match=r"expected str, got list \['AK'\]"):
        parse_config({"credentials": {"access_key_id": ["AK"]}})
    with pytest.raises(ConfigError, match=r"every item must be a string; got int 2"):
        parse_config({"targets": [{"app_id": "a", "group_id": "g", "uids": ["u1", 2]}]})


@pytest.mark.parametrize(
    ("data", "key", "fragment"),
    [
        (
            {
                "targets": [
                    {"app_id": "a", "group_id": "g"},
                    {"app_id": "a", "group_id": "h", "uids": ["u"], "uids_file": "u.txt"},
                ]
            },
            "targets[1].uids_file",
            "not both",
        ),
        (
            {"targets": [{"app_id": "a", "group_id": "g", "discover": True, "uids": []}]},
            "targets[0].discover",
            "discovery",
        ),
        (
            {"targets": [{"app_id": "a", "group_id": "g", "discover": True, "uids_file": "f"}]},
            "targets[0].discover",
            "discovery",
        ),
        (
            {"targets": [{"app_id": "a", "group_id": "g"}, {"app_id": "a", "group_id": ""}]},
            "targets[1].group_id",
            "non-empty",
        ),
        ({"sinks": [{}, {"kind": "file", "path": ""}]}, "sinks[1].path", "required"),
        ({"sinks": [{"fsync": 1}]}, "sinks[0].fsync", "expected bool"),
        ({"metrics": {"listen": "9108"}}, "metrics.listen", "host:port"),
        ({"metrics": {"listen": "host:http"}}, "metrics.listen", "host:port"),
        ({"limits": {"discovery_qps": 0}}, "limits.discovery_qps", "> 0"),
        ({"daemon": {"max_auth_failures": 0}}, "daemon.max_auth_failures", ">= 1"),
        ({"sweep": {"max_uid_bytes": 4097}}, "sweep.max_uid_bytes", "between 1 and 4096"),
        ({"api": {"transport": "curl"}}, "api.transport", "builtin, aiohttp; got 'curl'"),
    ],
)
def test_errors_from_post_init_name_the_full_key_and_the_source(
    data: dict[str, Any], key: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="inline.toml")
    assert info.value.key == key
    assert info.value.source == "inline.toml"
    assert str(info.value).startswith(f"inline.toml, key '{key}': ")
    assert fragment in info.value.detail


def test_dataclasses_check_themselves_when_built_in_code() -> None:
    with pytest.raises(ConfigError) as info:
        LimitsConfig(qps=0)
    assert info.value.key == "limits.qps" and info.value.source is None
    with pytest.raises(ConfigError) as info:
        ApiConfig(endpoint="host:0")
    assert info.value.key == "api.endpoint"
    with pytest.raises(ConfigError) as info:
        TargetConfig(app_id="", group_id="g")
    assert info.value.key == "app_id"  # an entry names keys relative to itself
    with pytest.raises(ConfigError) as info:
        SinkConfig(kind="file")
    assert info.value.key == "path"
    with pytest.raises(ConfigError) as info:
        PollerConfig().with_changes(retry=RetryConfig(max_attempts=0))
    assert info.value.key == "retry.max_attempts"


def test_half_credentials_are_a_credentials_value_but_not_a_config() -> None:
    # The credential chain accepts half a pair (and falls through); a whole config does not.
    half = CredentialsConfig(access_key_id="AK")
    with pytest.raises(ConfigError) as info:
        PollerConfig(credentials=half)
    assert info.value.key == "credentials.access_key_secret"


def test_a_missing_required_key_names_its_type() -> None:
    with pytest.raises(ConfigError, match=r"'targets\[0\]\.app_id': required; expected str"):
        parse_config({"targets": [{"group_id": "g"}]})
    with pytest.raises(ConfigError, match=r"'targets\[0\]\.group_id': required, a non-empty"):
        parse_config({"targets": [{"app_id": "a"}]})  # a group API needs a group


@pytest.mark.parametrize(
    ("endpoint", "default_port", "expected"),
    [
        ("live.aliyuncs.com", 443, ("live.aliyuncs.com", 443)),
        ("live.aliyuncs.com", 80, ("live.aliyuncs.com", 80)),
        ("127.0.0.1:8780", 80, ("127.0.0.1", 8780)),
        ("host:1", 443, ("host", 1)),
        ("host:65535", 443, ("host", 65535)),
        ("host:00443", 80, ("host", 443)),
        ("[::1]:8780", 80, ("::1", 8780)),
        ("[::1]", 443, ("::1", 443)),
        ("[::1]:", 443, ("::1", 443)),
        ("::1", 443, ("::1", 443)),  # an unbracketed IPv6 literal takes no port
        ("host:", 443, ("host", 443)),
    ],
)
def test_split_endpoint(endpoint: str, default_port: int, expected: tuple[str, int]) -> None:
    assert split_endpoint(endpoint, default_port) == expected


@pytest.mark.parametrize(
    "endpoint",
    [
        "host:http",
        "host:0",
        "host:00000",
        "host:65536",
        "host:70000",
        "host:100000",
        "host:000443",
        "host:+443",
        "host:-1",
        "host: 443",
        "host:443 ",
        "host:44_3",
        "host:４４３",  # full-width digits are digits to str.isdigit
        "host:٤٤٣",  # so are Arabic-Indic ones
        "host:²",
        "[::1]:0",
        "[::1]x",
        "[::1]8443",
        "[::1",
        ":443",
        "[]:443",
        "",
        "https://live.aliyuncs.com",
        "live.aliyuncs.com/",
        "live.aliyuncs.com:443/path",
    ],
)
def test_bad_endpoints_are_rejected_when_the_api_config_is_built(endpoint: str) -> None:
    with pytest.raises(ConfigError) as info:
        split_endpoint(endpoint, 443)
    assert info.value.key == "api.endpoint"
    with pytest.raises(ConfigError) as info:
        ApiConfig(endpoint=endpoint)
    assert info.value.key == "api.endpoint"
    with pytest.raises(ConfigError) as info:
        parse_config({"api": {"endpoint": endpoint}}, source="p.toml")
    assert info.value.key == "api.endpoint" and info.value.source == "p.toml"


@pytest.mark.parametrize(
    ("api", "host", "port"),
    [
        (ApiConfig(), "live.aliyuncs.com", 443),
        (ApiConfig(protocol="http"), "live.aliyuncs.com", 80),
        (ApiConfig(endpoint="127.0.0.1:8780", protocol="http"), "127.0.0.1", 8780),
        (ApiConfig(endpoint="example.com:8443"), "example.com", 8443),
        (ApiConfig(endpoint="[2001:db8::1]"), "2001:db8::1", 443),
        (ApiConfig(endpoint="[2001:db8::1]:8080", protocol="http"), "2001:db8::1", 8080),
    ],
)
def test_api_host_and_port(api: ApiConfig, host: str, port: int) -> None:
    assert (api.host, api.port) == (host, port)


@pytest.fixture(scope="module")
def ca_pem(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


def test_a_valid_ca_file_is_accepted_and_resolved_against_the_config(
    tmp_path: Path, ca_pem: Path
) -> None:
    config = write(tmp_path, '[api]\nca_file = "certs/ca.pem"\n')
    (config.parent / "certs").mkdir()
    (config.parent / "certs" / "ca.pem").write_bytes(ca_pem.read_bytes())
    assert load_config(config).api.ca_file == config.parent / "certs" / "ca.pem"
    assert parse_config({"api": {"ca_file": str(ca_pem)}}).api.ca_file == ca_pem
    assert parse_config({"api": {"ca_file": ""}}).api.ca_file is None


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "No such file"),
        ("dir", "Is a directory"),
        (b"", "not a valid PEM CA bundle"),
        (b"not a certificate\n", "not a valid PEM CA bundle"),
        (
            b"-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----\n",
            "not a valid PEM CA bundle",
        ),
    ],
)
def test_a_bad_ca_file_is_a_load_time_error(
    tmp_path: Path, content: bytes | str | None, fragment: str
) -> None:
    config = write(tmp_path, '[api]\nca_file = "ca.pem"\n')
    target = config.parent / "ca.pem"
    if content == "dir":
        target.mkdir()
    elif isinstance(content, bytes):
        target.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert info.value.key == "api.ca_file" and info.value.source == str(config)
    assert fragment in info.value.detail
    assert str(target) in info.value.detail


def test_a_ca_file_built_in_code_is_checked_by_the_client_not_the_dataclass(tmp_path: Path) -> None:
    # Reading files is the loader's business; poller.wire.client checks again when it connects.
    assert ApiConfig(ca_file=tmp_path / "missing.pem").ca_file == tmp_path / "missing.pem"


def test_the_config_package_imports_only_the_standard_library_and_the_core() -> None:
    import ast
    import sys

    package = Path(__file__).resolve().parent.parent / "poller" / "config"
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                allowed = name.startswith(("poller.core", "poller.config"))
                assert allowed or top in sys.stdlib_module_names, f"{path.name}: {name}"


def test_qps_above_the_documented_limit_is_a_warning_not_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="poller.config"):
        config = parse_config({"limits": {"qps": 150}}, source="poller.toml")
    assert config.limits.qps == 150.0
    [warning] = [r.getMessage() for r in caplog.records]
    assert "poller.toml" in warning and "limits.qps" in warning and "150" in warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="poller.config"):
        parse_config({"limits": {"in_group_qps": 60, "app_online_qps": 50}})
    [warning] = [r.getMessage() for r in caplog.records]  # 50 is the documented limit itself
    assert "limits.in_group_qps" in warning and "CheckLiveMessageUsersInGroup" in warning


def test_an_absurd_in_flight_limit_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"limits": {"max_in_flight": 10_000_000}}, source="poller.toml")
    assert caught.value.key == "limits.max_in_flight" and "between 1 and 1024" in str(caught.value)
