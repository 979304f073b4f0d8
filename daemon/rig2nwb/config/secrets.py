"""Secrets in configured URLs, and what apprise makes of them.

A notification URL may carry ``${NAME}`` references: they are filled from the environment (or a
systemd credential) only when the URL is used, never written back, and every message that shows
a URL shows apprise's privacy form, secrets masked. apprise itself is imported only when a URL
is looked at, so a config without notification targets never loads it."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from rig2nwb.errors import SecretMissing, SecretProblem

if TYPE_CHECKING:
    import apprise

_SECRET_REF = re.compile(r"\$\{([^}]*)\}")


_SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# scheme://user:password@... : the password of a URL's user info (before the first / ? #).
_USERINFO_PASSWORD = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#@:]*:([^/?#]*)@")


def fill_secrets(url: str) -> str:
    """Replace every ``${NAME}`` by the environment variable NAME, else by the file NAME in
    ``$CREDENTIALS_DIRECTORY`` (systemd LoadCredential). A value that is the password of the
    URL's user info is percent-encoded, so any character works there; elsewhere it is inserted
    as it is (a token, a host, a whole URL)."""
    userinfo = _USERINFO_PASSWORD.match(url)
    password_span = userinfo.span(1) if userinfo else None
    out, pos = [], 0
    for m in _SECRET_REF.finditer(url):
        name = m.group(1)
        if not _SECRET_NAME.fullmatch(name):
            raise SecretProblem(f"{m.group(0)} is not a valid reference (write ${{NAME}}, NAME "
                                "made of letters, digits and _)")
        value = _secret_value(name)
        if m.span() == password_span:
            value = quote(value, safe="")
        out += [url[pos:m.start()], value]
        pos = m.end()
    return "".join([*out, url[pos:]])


def _secret_value(name: str) -> str:
    value = os.environ.get(name)
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if value is None and creds:
        try:
            value = (Path(creds) / name).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError):
            value = None
    if value is None:
        where = " nor in $CREDENTIALS_DIRECTORY" if creds else ""
        raise SecretMissing(f"${{{name}}} is not set in the environment{where}")
    if not value:
        raise SecretMissing(f"${{{name}}} is empty")
    return value


def notify_url_problems(url: str, *, check_environment: bool = True) -> list[str]:
    """What is wrong with one notification URL as written in config.toml. Secrets must come
    from ``${NAME}`` (config files get copied, mailed, committed); with ``check_environment``
    every reference must also be set and apprise must be able to use the result. Messages show
    a URL only in apprise's privacy form (secrets masked)."""
    m = _USERINFO_PASSWORD.match(url)
    if m and m.group(1) and not re.fullmatch(r"\$\{[^}]*\}", m.group(1)):
        return ["holds a password written in the URL itself; put it in an environment variable "
                "(or a systemd credential) and write ${NAME} in its place, e.g. "
                "mailto://user:${SMTP_PASSWORD}@host"]
    try:
        filled = fill_secrets(url)
    except SecretMissing as exc:
        return [str(exc)] if check_environment else []
    except SecretProblem as exc:
        return [str(exc)]
    if not check_environment:
        return []
    plugin = instantiate(filled)  # apprise is imported only now: when targets exist
    if plugin is None:
        return ["apprise cannot use this URL (unknown service, or parts missing or invalid; see "
                "https://github.com/caronc/apprise/wiki)"]
    shown = plugin.url(privacy=True)
    if not _SECRET_REF.search(url) and shown != plugin.url(privacy=False):
        return [f"holds a secret (token or password) written literally ({shown}); put it in an "
                "environment variable (or a systemd credential) and write ${NAME} in its place"]
    return []


def quiet_apprise() -> None:
    """Keep apprise's own log lines out of ours: the sender reports each failure once, with the
    target and the event, from what apprise captured for that call (``NotifyResult.logs``).
    apprise's capture handlers sit on its own logger, so they still see every warning."""
    lg = logging.getLogger("apprise")
    lg.propagate = False
    lg.setLevel(logging.WARNING)
    if not any(isinstance(h, logging.NullHandler) for h in lg.handlers):
        lg.addHandler(logging.NullHandler())  # else logging's last-resort handler prints


def apprise_asset() -> apprise.AppriseAsset:
    import apprise

    return apprise.AppriseAsset(app_id="rig2nwb", app_desc="rig2nwb: two-photon rig to NWB",
                                app_url="https://github.com/caronc/apprise", secure_logging=True)


def instantiate(url: str) -> Any:
    """apprise's plugin for a URL, or None when apprise cannot use it."""
    import apprise

    quiet_apprise()
    return apprise.Apprise.instantiate(url, asset=apprise_asset())
