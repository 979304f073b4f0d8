"""apprise behind one small face: every configured target in one Apprise object, tagged with its
kinds and a tag of its own (``rig2nwb-target-N``), so that one call sends a message to the
right targets and apprise's per-service results say which target failed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rig2nwb.config.schema import NotifyConfig
from rig2nwb.config.secrets import apprise_asset, quiet_apprise
from rig2nwb.errors import ConfigError, SecretProblem

if TYPE_CHECKING:
    import apprise


TARGET_TAG = "rig2nwb-target-{}"


@dataclass(frozen=True)
class Target:
    index: int
    kinds: frozenset[str]
    shown: str  # apprise's privacy form of the URL: secrets masked, safe for logs


def build_apprise(cfg: NotifyConfig) -> tuple[apprise.Apprise, list[Target]]:
    """One Apprise object holding every target, tagged with its kinds and its own tag."""
    import apprise

    quiet_apprise()
    obj = apprise.Apprise(asset=apprise_asset())
    targets = []
    for i, t in enumerate(cfg.targets):
        where = f"notify.targets[{i}].url"
        try:
            url = t.secret_url()
        except SecretProblem as exc:
            raise ConfigError("notify", [f"{where}: {exc}"]) from None
        plugin: Any = apprise.Apprise.instantiate(url, asset=obj.asset,
                                                  tag=[*t.tags, TARGET_TAG.format(i)])
        if plugin is None:
            raise ConfigError("notify", [f"{where}: apprise cannot use this URL"])
        obj.add(plugin)
        targets.append(Target(i, frozenset(t.tags), plugin.url(privacy=True)))
    return obj, targets
