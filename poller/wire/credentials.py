"""Where the AccessKey comes from: config, then environment, then the credentials file.

Order (the first that yields a key wins):

1. ``[credentials]`` in poller's config;
2. ``ALIBABA_CLOUD_ACCESS_KEY_ID`` / ``ALIBABA_CLOUD_ACCESS_KEY_SECRET`` (and optionally
   ``ALIBABA_CLOUD_SECURITY_TOKEN``);
3. the INI file named by ``ALIBABA_CLOUD_CREDENTIALS_FILE``, else
   ``~/.alibabacloud/credentials.ini``; section ``ALIBABA_CLOUD_PROFILE`` or ``default``,
   ``type = access_key`` (text after ``#`` in a value is a comment).

The secret and token are held in :class:`~poller.wire.signing.SigningCredentials`, whose ``repr``
shows neither.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from pathlib import Path

from poller.config import CredentialsConfig
from poller.config.render import mask
from poller.core.errors import ConfigError, CredentialsNotFound

from .signing import SigningCredentials

__all__ = ["mask", "resolve_credentials"]

ENV_ID = "ALIBABA_CLOUD_ACCESS_KEY_ID"
ENV_SECRET = "ALIBABA_CLOUD_ACCESS_KEY_SECRET"
ENV_TOKEN = "ALIBABA_CLOUD_SECURITY_TOKEN"
ENV_FILE = "ALIBABA_CLOUD_CREDENTIALS_FILE"
ENV_PROFILE = "ALIBABA_CLOUD_PROFILE"


def resolve_credentials(
    config: CredentialsConfig,
    environ: Mapping[str, str] | None = None,
    home: Path | None = None,
) -> SigningCredentials:
    env = os.environ if environ is None else environ
    if config.access_key_id and config.access_key_secret:
        return SigningCredentials(
            access_key_id=config.access_key_id,
            access_key_secret=config.access_key_secret,
            security_token=config.security_token,
            provider_name="static_sts" if config.security_token else "static_ak",
        )
    key_id, secret = env.get(ENV_ID, "").strip(), env.get(ENV_SECRET, "").strip()
    if key_id or secret:
        if not (key_id and secret):
            missing = ENV_SECRET if key_id else ENV_ID
            raise ConfigError(f"{missing} is not set although its partner variable is")
        token = env.get(ENV_TOKEN, "").strip() or None
        return SigningCredentials(key_id, secret, token, provider_name="default/env")
    file_text = env.get(ENV_FILE, "").strip()
    if file_text:
        path = Path(file_text).expanduser()
        if not path.is_file():
            raise ConfigError(f"{ENV_FILE} points to a missing file", source=str(path))
    else:
        path = (home or Path.home()) / ".alibabacloud" / "credentials.ini"
        if not path.is_file():
            raise CredentialsNotFound(
                "no credentials: set [credentials] in the config, or "
                f"{ENV_ID}/{ENV_SECRET}, or {ENV_FILE} (default {path})"
            )
    return _from_ini(path, env.get(ENV_PROFILE, "").strip() or "default")


def _from_ini(path: Path, profile: str) -> SigningCredentials:
    parser = configparser.ConfigParser(inline_comment_prefixes=("#",), interpolation=None)
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read credentials file: {exc}", source=str(path)) from exc
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as exc:
        # configparser quotes the offending line, which may hold the secret: never show it.
        line = getattr(exc, "lineno", None)
        if line is None and isinstance(exc, configparser.ParsingError) and exc.errors:
            line = exc.errors[0][0]
        raise ConfigError(
            f"not a valid INI file ({type(exc).__name__})", source=str(path), line=line
        ) from None
    if not parser.has_section(profile):
        raise ConfigError(f"no profile [{profile}]", source=str(path))
    section = parser[profile]
    kind = section.get("type", "access_key").strip()
    if kind != "access_key":
        raise ConfigError(
            f"credential type {kind!r} is not supported (only access_key)",
            source=str(path),
            key=f"{profile}.type",
        )
    key_id = section.get("access_key_id", "").strip()
    secret = section.get("access_key_secret", "").strip()
    if not key_id:
        raise ConfigError("missing", source=str(path), key=f"{profile}.access_key_id")
    if not secret:
        raise ConfigError("missing", source=str(path), key=f"{profile}.access_key_secret")
    return SigningCredentials(key_id, secret, provider_name="profile/static_ak")
