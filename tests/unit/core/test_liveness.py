"""core.liveness: running, silent and stopped, from a heartbeat file's content."""

from __future__ import annotations

from rig2nwb.core.liveness import SILENT_AFTER_BEATS, liveness

BEAT = {"state": "running", "beat_at": 1000.0, "interval_seconds": 10.0, "pid": 5}


def test_running_until_three_intervals_without_a_beat_then_silent() -> None:
    edge = 1000.0 + SILENT_AFTER_BEATS * 10.0
    assert liveness(BEAT, 1001.0, process_alive=True).state == "running"
    assert liveness(BEAT, edge, process_alive=None).state == "running"
    silent = liveness(BEAT, edge + 0.5, process_alive=True)
    assert silent.state == "silent" and silent.age_seconds == edge + 0.5 - 1000.0
    assert "expected every 10 s" in silent.detail


def test_stopped_cleanly_killed_or_never_started() -> None:
    stopped = liveness({**BEAT, "state": "stopped", "stopped_at": 1500.0}, 1600.0,
                       process_alive=False)
    assert stopped.state == "stopped" and stopped.age_seconds == 100.0
    killed = liveness(BEAT, 1002.0, process_alive=False)  # fresh beat, but the pid is gone
    assert killed.state == "stopped" and "without a clean stop" in killed.detail
    never = liveness(None, 1.0, process_alive=None)
    assert never.state == "stopped" and never.age_seconds is None
    broken = liveness({"state": "running"}, 1.0, process_alive=None)
    assert broken.state == "stopped" and "cannot be read" in broken.detail


def test_a_clock_behind_the_beat_is_not_a_negative_age() -> None:
    assert liveness(BEAT, 900.0, process_alive=True).age_seconds == 0.0
