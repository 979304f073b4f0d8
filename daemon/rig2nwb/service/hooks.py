"""The hooks a daemon runs beside its worker loop (see engine.view.ServiceHook)."""

from __future__ import annotations

from rig2nwb.config.schema import Config
from rig2nwb.engine.view import ServiceHook
from rig2nwb.service.heartbeat import HeartbeatHook
from rig2nwb.service.sdnotify import SystemdHook


def default_hooks(cfg: Config) -> list[ServiceHook]:
    """The hooks a daemon runs, in call order."""
    # systemd first: READY=1 goes out as soon as the service watches (a no-op outside systemd).
    hooks: list[ServiceHook] = [SystemdHook(), HeartbeatHook(cfg)]
    # The outputs are imported only when configured (the page and pictures load matplotlib).
    if cfg.status.preview:  # before the status page, so the page links this tick's preview
        from rig2nwb.outputs.preview import PreviewHook

        hooks.append(PreviewHook(cfg))
    if cfg.status.page:
        from rig2nwb.outputs.page import StatusPageHook

        hooks.append(StatusPageHook(cfg))
    from rig2nwb.outputs.notify import NotifyHook  # always: it also warns when the output disk fills up

    hooks.append(NotifyHook(cfg))
    return hooks
