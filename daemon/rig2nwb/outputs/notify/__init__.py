"""Notifications through apprise: a session converted, suite2p attached, a problem, the daemon
started or stopped, sent to mail, chat or webhooks (see docs/notifications.md).

The source is the ledger's ``events`` table, read with a cursor (an event id) that is kept in the
ledger, so a restart loses nothing: the cursor moves past an event only once its notification
was delivered to every target that asked for it, or given up after the configured attempts
(at least once; a crash between sending and saving the cursor repeats a message). On the very
first start the cursor begins at the newest event written before this process started, so old
history never floods anyone.

Two threads, one owner each:

- the worker thread (``NotifyHook.tick``, like every service hook) reads new events, decides
  what they mean, formats the message (it may read the ledger) and hands it over; it also
  saves the cursor and checks free disk space;
- one sender thread owns apprise: it sends, retries a failed target after a delay (others are
  not sent again), and reports each finished message back through a queue. It never touches
  the ledger, and the worker never waits for it, so a slow mail server cannot stall conversion.

Routing (adapter): every target is added to one ``Apprise`` object with its kinds as tags plus a tag of
its own (``rig2nwb-target-N``); a message of kind K for targets N, M is sent with
``tag=[(K, "rig2nwb-target-N"), (K, "rig2nwb-target-M")]`` and apprise's per-service results
(which carry each service's tags) say which target failed.

Which event makes which message (``Decision``):

- ``converted``: the ``validate`` event that follows a session's ``finalize`` (the check result
  and the summary picture exist by then); on the ``finalize`` event itself when no check will
  follow (``output.check_files = false``). A finalize is held while its check is pending.
- ``suite2p``: likewise, the ``validate`` event after a ``suite2p`` event, or the suite2p event.
- ``problem``, ``warning``, ``daemon``: their events, one message each.

The package: ``adapter`` (apprise), ``sender`` (the delivery thread), ``routing`` (which event
makes which message), ``messages`` (their words), ``hook`` (the worker's side, with the cursor).
"""

from rig2nwb.outputs.notify.hook import NotifyHook

__all__ = ["NotifyHook"]
