"""Rendering a config as TOML (poller.config.render_toml) and reading it back."""

from __future__ import annotations

import string
import tomllib
from pathlib import Path
from typing import Any

import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from poller.config import (
    ApiConfig,
    CredentialsConfig,
    DaemonConfig,
    LimitsConfig,
    MetricsConfig,
    PollerConfig,
    RetryConfig,
    SinkConfig,
    SweepConfig,
    TargetConfig,
    load_config,
    parse_config,
    render_toml,
)
from poller.emulator.process import EmulatorProcess

from .test_config import FULL, write


def round_trip(config: PollerConfig) -> PollerConfig:
    return parse_config(tomllib.loads(render_toml(config, mask_secrets=False)))


# ----------------------------------------------------------------------------------------------
# Table tests

NASTY = 'q"uote b\\ack\\\\slash \n\r\t\x00\x01\x1f\x7f \x80 é 用户 🙂 \u2028 \'single\' """ #'


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(PollerConfig(), id="defaults"),
        pytest.param(
            PollerConfig(
                api=ApiConfig(user_agent=NASTY, endpoint="[::1]:8443", ca_file=None),
                credentials=CredentialsConfig(
                    access_key_id=NASTY, access_key_secret=NASTY, security_token=NASTY
                ),
                targets=(
                    TargetConfig(app_id=NASTY, group_id="g", uids=(NASTY, "", "u")),
                    TargetConfig(app_id="a", group_id=NASTY, uids=()),
                    TargetConfig(app_id="a", group_id="d", discover=True),
                    TargetConfig(app_id="a", group_id="f", uids_file=Path("/x/" + NASTY)),
                ),
                sinks=(SinkConfig(kind="file", path=Path('/o\\ut "x".jsonl'), fsync=True),),
            ),
            id="escapes",
        ),
        pytest.param(
            PollerConfig(
                limits=LimitsConfig(qps=1e-300, window_margin_ms=0.0, discovery_qps=1e300),
                retry=RetryConfig(backoff_base_s=5e-324, budget_ratio=0.1 + 0.2),
                sweep=SweepConfig(max_uid_bytes=4096, queue_size=2**62),
                daemon=DaemonConfig(interval_s=1 / 3, emit="all"),
                metrics=MetricsConfig(listen="[::]:0", ready_max_age_s=123456789.125),
            ),
            id="numbers",
        ),
    ],
)
def test_round_trip_table(config: PollerConfig) -> None:
    assert round_trip(config) == config


def test_the_full_example_round_trips(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL)).with_changes(source=None)
    assert round_trip(config) == config


def test_the_example_config_round_trips() -> None:
    example = Path(__file__).resolve().parent.parent / "config.example.toml"
    config = load_config(example).with_changes(source=None)
    assert round_trip(config) == config


def test_a_ca_file_round_trips(tmp_path: Path) -> None:
    ca = tmp_path / 'my ca "1".pem'
    trustme.CA().cert_pem.write_to_path(str(ca))
    config = PollerConfig(api=ApiConfig(ca_file=ca))
    assert round_trip(config) == config


def test_check_config_format() -> None:
    config = PollerConfig(
        credentials=CredentialsConfig(access_key_id="AKID", access_key_secret="s3cr3t"),
        targets=(TargetConfig(app_id="a", group_id="g", uids=("u1",)),),
        sinks=(SinkConfig(),),
    )
    text = render_toml(config, header="effective configuration of x.toml (secrets masked)")
    assert "s3cr3t" not in text
    lines = text.splitlines()
    assert lines[:3] == [
        "# effective configuration of x.toml (secrets masked)",
        "[api]",
        'endpoint = "live.aliyuncs.com"',
    ]
    assert '\n[credentials]\naccess_key_id = "AKID"\naccess_key_secret = "****"\n' in text
    assert 'security_token = "(unset)"' in text
    assert "qps = 100.0" in text and "max_in_flight = 64" in text
    assert 'user_agent = ""' in text  # every key of a section is shown
    sections = [line for line in lines if line.startswith("[")]
    assert sections == [
        "[api]",
        "[credentials]",
        "[limits]",
        "[retry]",
        "[sweep]",
        "[daemon]",
        "[metrics]",
        "[lookups]",
        "[query]",
        "[[targets]]",
        "[[sinks]]",
    ]
    # entries leave out what is unset
    assert text.endswith(
        '\n[[targets]]\napp_id = "a"\ngroup_id = "g"\napi = "BatchGetOnlineUsers"\n'
        'uids = ["u1"]\ndiscover = false\n'
        '\n[[sinks]]\nkind = "stdout"\nfsync = false\n'
    )
    tomllib.loads(text)  # masked output is still TOML


def test_strings_escape_backslash_quote_and_control_characters() -> None:
    config = PollerConfig(api=ApiConfig(user_agent='a"b\\c\n\x00\x7f\td\u00e9'))
    text = render_toml(config)
    assert 'user_agent = "a\\"b\\\\c\\u000A\\u0000\\u007F\\u0009d\u00e9"' in text


def test_a_header_cannot_break_out_of_its_comment() -> None:
    text = render_toml(PollerConfig(), header="one\ntwo\x00\x1b\n\n[api]")
    assert text.startswith("# one\n# two\\u0000\\u001B\n#\n# [api]\n[api]\n")
    tomllib.loads(text)


def test_sections_limit_the_output() -> None:
    config = PollerConfig(targets=(TargetConfig(app_id="a", group_id="g"),))
    text = render_toml(config, sections=("credentials", "api"))
    assert [line for line in text.splitlines() if line.startswith("[")] == [
        "[api]",
        "[credentials]",
    ]
    assert text.endswith('security_token = "(unset)"\n')


@pytest.mark.parametrize("protocol", ["https", "http"])
def test_emulator_config_toml_follows_the_protocol_and_ca_file(
    tmp_path: Path, protocol: str
) -> None:
    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    emulator = EmulatorProcess(ca_file=ca if protocol == "https" else None)
    emulator.url = f"{protocol}://127.0.0.1:8443"  # as if started
    text = emulator.config_toml("key-id", 'se"cret\\')
    config = parse_config(tomllib.loads(text))
    assert config.api == ApiConfig(
        endpoint="127.0.0.1:8443",
        protocol="https" if protocol == "https" else "http",
        ca_file=ca if protocol == "https" else None,
    )
    assert config.credentials == CredentialsConfig(
        access_key_id="key-id", access_key_secret='se"cret\\'
    )
    # callers append further tables
    more = text + '\n[daemon]\ninterval_s = 1\n\n[[targets]]\napp_id = "a"\ngroup_id = "g"\n'
    assert parse_config(tomllib.loads(more)).daemon.interval_s == 1.0


# ----------------------------------------------------------------------------------------------
# Property: render then parse is the identity

texts = st.text()
nonempty = st.text(min_size=1)
optional_text = st.none() | nonempty  # "" reads back as unset
paths = st.builds(
    lambda absolute, parts: Path("/" if absolute else ".", *parts),
    st.booleans(),
    st.lists(st.text(st.characters(blacklist_characters="/\x00"), min_size=1), max_size=3),
).filter(lambda p: not str(p).startswith("~"))
ge_0 = st.floats(min_value=0.0, allow_nan=False, allow_infinity=False)
gt_0 = ge_0.filter(lambda v: v > 0)
at_least_1 = st.integers(min_value=1, max_value=2**63 - 1)
hostnames = st.text(string.ascii_letters + string.digits + ".-_", min_size=1)
ports = st.integers(min_value=1, max_value=65535)
endpoints = st.one_of(
    hostnames,
    st.builds(lambda h, p: f"{h}:{p}", hostnames, ports),
    st.builds(lambda p: f"[::1]:{p}", ports),
)


def credentials() -> st.SearchStrategy[CredentialsConfig]:
    pair = st.builds(
        CredentialsConfig,
        access_key_id=nonempty,
        access_key_secret=nonempty,
        security_token=optional_text,
    )
    return st.just(CredentialsConfig()) | pair


def targets() -> st.SearchStrategy[tuple[TargetConfig, ...]]:
    source: st.SearchStrategy[dict[str, Any]] = st.one_of(
        st.just({}),
        st.builds(lambda u: {"uids": tuple(u)}, st.lists(texts, max_size=4)),
        st.builds(lambda p: {"uids_file": p}, paths),
        st.just({"discover": True}),
    )
    entry = st.builds(
        lambda app, group, extra: TargetConfig(app_id=app, group_id=group, **extra),
        nonempty,
        nonempty,
        source,
    )
    return st.lists(entry, max_size=3, unique_by=lambda t: (t.app_id, t.group_id)).map(tuple)


sinks = st.lists(
    st.one_of(
        st.builds(SinkConfig, kind=st.just("stdout"), path=st.none() | paths, fsync=st.booleans()),
        st.builds(SinkConfig, kind=st.just("file"), path=paths, fsync=st.booleans()),
    ),
    max_size=3,
).map(tuple)

configs = st.builds(
    PollerConfig,
    api=st.builds(
        ApiConfig,
        endpoint=endpoints,
        protocol=st.sampled_from(["https", "http"]),
        signature=st.sampled_from(["v3", "v1"]),
        timeout_s=gt_0,
        connect_timeout_s=gt_0,
        user_agent=optional_text,
        verify_tls=st.booleans(),
        transport=st.sampled_from(["builtin", "aiohttp"]),
    ),
    credentials=credentials(),
    limits=st.builds(
        LimitsConfig,
        qps=gt_0,
        max_in_flight=st.integers(1, 1024),
        window_margin_ms=ge_0,
        adaptive=st.booleans(),
        discovery_qps=gt_0,
    ),
    retry=st.builds(
        RetryConfig,
        max_attempts=at_least_1,
        backoff_base_s=ge_0,
        backoff_cap_s=ge_0,
        throttle_backoff_base_s=ge_0,
        budget_ratio=ge_0,
        budget_min_tokens=ge_0,
    ),
    sweep=st.builds(
        SweepConfig,
        dedupe=st.booleans(),
        deadline_s=ge_0,
        queue_size=at_least_1,
        max_uid_bytes=st.integers(1, 4096),
    ),
    daemon=st.builds(
        DaemonConfig,
        interval_s=gt_0,
        emit=st.sampled_from(["changes", "all"]),
        start_jitter_s=ge_0,
        drain_timeout_s=ge_0,
        max_auth_failures=at_least_1,
    ),
    metrics=st.builds(
        MetricsConfig,
        listen=st.just("") | st.builds(lambda h, p: f"{h}:{p}", hostnames, ports),
        ready_max_age_s=ge_0,
    ),
    targets=targets(),
    sinks=sinks,
)


@settings(max_examples=200, deadline=None)
@given(configs)
def test_render_then_parse_is_the_identity(config: PollerConfig) -> None:
    assert round_trip(config) == config


@settings(max_examples=50, deadline=None)
@given(configs, nonempty, nonempty)
def test_masked_output_does_not_depend_on_the_secrets(
    config: PollerConfig, other_secret: str, other_token: str
) -> None:
    creds = config.credentials
    swapped = CredentialsConfig(
        access_key_id=creds.access_key_id,
        access_key_secret=creds.access_key_secret and other_secret,
        security_token=creds.security_token and other_token,
    )
    text = render_toml(config)
    assert render_toml(config.with_changes(credentials=swapped)) == text
    data = tomllib.loads(text)["credentials"]
    assert data["access_key_secret"] == ("****" if creds.access_key_secret else "(unset)")
    assert data["security_token"] == ("****" if creds.security_token else "(unset)")
