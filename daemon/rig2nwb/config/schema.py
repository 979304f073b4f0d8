"""The configuration's schema: one pydantic model per ``config.toml`` section, with defaults.

Reading and validating a file is config.loading (every problem at once, each with its
location); secrets in notification URLs are config.secrets.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PrivateAttr,
    SecretStr,
)

from rig2nwb.config.secrets import (
    fill_secrets,
)
from rig2nwb.core.patterns import Pattern
from rig2nwb.errors import SecretProblem

DEFAULT_CONFIG = Path("config.toml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RigConfig(_Section):
    name: str = Field("rig1", min_length=1, description="rig name, bound to every log line")
    root: Path = Field(description="the rig's save folder (read only for rig2nwb)")
    frames: str = "{subject}/tif/{site}/{session}/*.tif"
    scan_file: str = "{subject}/txt/{session}_scan.txt"
    trial_file: str = "{subject}/txt/{session}_trial.txt"
    end_marker: str = ""
    subject: str = Field("", description="subject id when the frames pattern has no {subject}")


class OutputConfig(_Section):
    folder: Path
    nwb_name: str = "sub-{subject}_ses-{session}.nwb"
    # gzip (deflate, after HDF5's byte shuffle): filters built into every HDF5, so the files open
    # in every NWB reader without plugins. blosc and lzf need plugins in the reader (opt-in).
    compression: Literal["none", "gzip", "lzf", "blosc-lz4", "blosc-zstd"] = "gzip"
    compression_level: int | None = Field(None, ge=0, le=9)
    shuffle: bool = Field(True, description="byte shuffle before gzip (built into HDF5)")
    min_free_mb: int = Field(1024, ge=0)
    warn_free_mb: int | None = Field(
        None, ge=0, description="rig-wide warning below this much free space; default 10 x "
        "min_free_mb, 0 = never")
    check_files: bool = Field(True, description="check finished files with pynwb + nwbinspector")


class StateConfig(_Section):
    folder: Path


class WatchConfig(_Section):
    observer: Literal["auto", "native", "polling"] = "auto"
    rescan_seconds: float = Field(30.0, gt=0)
    polling_interval_seconds: float = Field(5.0, gt=0)


Signal = Literal["next_file", "marker", "close_write", "stable"]
ALL_SIGNALS: tuple[Signal, ...] = ("next_file", "marker", "close_write", "stable")


class CompletionConfig(_Section):
    signals: list[Signal] = Field(default_factory=lambda: list(ALL_SIGNALS), min_length=1)
    settle_seconds: float = Field(5.0, ge=0)
    session_idle_seconds: float = Field(300.0, gt=0)
    require_lab_files: bool = True
    gap_wait_seconds: float = Field(60.0, ge=0)


class AppendConfig(_Section):
    batch_frames: int = Field(100, ge=1, le=10_000)
    commit_every_frames: int = Field(1000, ge=1)
    chunk_frames: int = Field(1, ge=1)
    # gzip only: threads that compress chunks in parallel; 0 = one per CPU the process may use.
    compress_threads: int = Field(0, ge=0, le=256)
    # What one file's append may hold in memory (MiB): batches are sized in bytes from it (a
    # batch in flight is about four times its frames), and a frame over a quarter of it is
    # refused before it is decoded. batch_frames stays the most frames in a batch.
    memory_mb: int = Field(256, ge=16, le=65_536)


class ServiceConfig(_Section):
    # The worker's CPU priority (POSIX nice), applied before it starts any thread: when the rig's
    # acquisition and rig2nwb both want the CPU, acquisition wins. Only ever lowers priority.
    nice: int = Field(10, ge=0, le=19)
    # A session during which the worker process died (a library segfault, the OOM killer) this
    # many times in a row is quarantined instead of retried forever (`rig2nwb retry` lifts it).
    max_worker_deaths: int = Field(2, ge=1, le=100)
    # How often the worker rewrites heartbeat.json (state folder) for `rig2nwb lab`; a daemon
    # without a beat for 3 intervals shows as silent there.
    heartbeat_seconds: float = Field(10.0, gt=0, le=3600)


class SessionConfig(_Section):
    description: str = "Two-photon calcium imaging session"
    experimenter: list[str] = Field(default_factory=list)
    lab: str = ""
    institution: str = ""
    experiment_description: str = ""
    timezone: str = "UTC"
    keywords: list[str] = Field(default_factory=list)
    protocol: str = ""
    related_publications: list[str] = Field(default_factory=list)


class SubjectConfig(_Section):
    species: str = "Mus musculus"
    sex: Literal["M", "F", "U", "O"] = "U"
    age: str = ""
    genotype: str = ""
    strain: str = ""
    description: str = ""
    date_of_birth: datetime.date | None = None
    weight: str = ""


class DeviceConfig(_Section):
    name: str = "Microscope"
    description: str = "Two-photon microscope"
    manufacturer: str = "Sutter Instrument"
    model: str = "Movable Objective Microscope (MOM)"


class ChannelInfo(_Section):
    """Per-channel overrides, keyed by the channel number ("1", "2", ScanImage's "4", ...)."""

    description: str = ""
    emission_lambda: float | None = Field(None, gt=0)
    indicator: str = ""


class ImagingConfig(_Section):
    frame_rate: float = Field(30.0, gt=0, description="nominal frame rate until onsets are known")
    excitation_lambda: float = Field(920.0, gt=0)
    emission_lambda: float = Field(510.0, gt=0)
    indicator: str = "GCaMP6s"
    location: str = "VISp"
    plane_description: str = "Imaging plane"
    channel_description: str = "Green (GCaMP) emission"
    grid_spacing_um: list[float] | None = Field(None, min_length=2, max_length=2)
    # Layout of plain (non-ScanImage) TIFFs; ScanImage files describe their own.
    planes: int = Field(1, ge=1, le=128, description="planes interleaved page by page")
    channels: int = Field(1, ge=1, le=8, description="channels interleaved within each frame")
    flyback_frames: int = Field(0, ge=0, le=128, description="frames per volume to drop")
    plane_depths_um: list[float] = Field(default_factory=list)
    channel_info: dict[str, ChannelInfo] = Field(default_factory=dict)


class TrialColumn(_Section):
    description: str = Field(min_length=1)
    unit: str = ""


class TrialsConfig(_Section):
    """The lab's trial file: one trial per line, whitespace-separated columns in this order.

    "" (or "-") names a column that is read but not stored. ``stim_on`` (onset) and ``stim_dur``
    (duration) are required. Times are in ``time_unit``, on the same clock as the scan file."""

    columns: list[str] = Field(
        default_factory=lambda: ["stim_on", "stim_dur", "", "sf", "", "dir"], min_length=2)
    time_unit: Literal["ms", "s"] = "ms"
    pad_before_ms: float = Field(500.0, ge=0)
    pad_after_ms: float = Field(500.0, ge=0)
    column_info: dict[str, TrialColumn] = Field(default_factory=lambda: {
        "sf": TrialColumn(description="spatial frequency of the grating", unit="cycles/degree"),
        "dir": TrialColumn(description="drift direction of the grating", unit="degrees"),
    })


class ScanConfig(_Section):
    """The lab's scan file: frame onsets, whitespace-separated, on the first line.

    ``on_mismatch`` when the number of onsets differs from the number of frames:
    ``keep_nominal`` leaves the nominal-rate timestamps and reports the mismatch;
    ``drop_extra_onsets`` uses the first onsets when there are more onsets than frames (a scan
    clock that kept ticking after the last saved frame) and reports how many were dropped; fewer
    onsets than frames always keeps the nominal timestamps. Frames are never shifted."""

    time_unit: Literal["ms", "s"] = "ms"
    on_mismatch: Literal["keep_nominal", "drop_extra_onsets"] = "keep_nominal"


DEFAULT_JOB_COMMAND = (
    "{python}", "-m", "rig2nwb.suite2p.job", "--session-folder", "{session_folder}",
    "--suite2p-folder", "{suite2p_folder}", "--fs", "{fs}", "--nplanes", "{nplanes}",
    "--nchannels", "{nchannels}", "--settings", "{settings}")


class Suite2pRunConfig(_Section):
    """rig2nwb starting suite2p itself (docs/processing.md): once a session is finished and
    checked, its job runs ``command`` on this machine (``local``) or on a SLURM cluster
    (``slurm``), writing where ``suite2p.folder`` says; the attach stage then adds the results.
    ``none`` (the default) leaves running suite2p to the lab."""

    executor: Literal["none", "local", "slurm"] = "none"
    command: list[str] = Field(
        default_factory=lambda: list(DEFAULT_JOB_COMMAND),
        description="the job's program and arguments; placeholders as in core/jobs.py")
    settings: Path | None = Field(
        None, description="the lab's suite2p settings (.npy, .json or .toml); a session's "
        "rig2nwb.toml [suite2p] settings overrides it")
    slurm_options: list[str] = Field(
        default_factory=list, description="extra sbatch options, e.g. ['--partition=gpu', "
        "'--time=12:00:00', '--mem=64G', '--cpus-per-task=8']")
    local_launcher: Literal["auto", "process", "systemd"] = Field(
        "auto", description="systemd: as rig2nwb-suite2p@.service instances (auto under systemd)")
    max_running: int = Field(1, ge=1, le=1000, description="jobs queued or running at a time")
    retries: int = Field(1, ge=0, le=10, description="new attempts after a failed or lost job")
    timeout_minutes: float = Field(720.0, gt=0, description="a running job is cancelled after")
    poll_seconds: float = Field(15.0, gt=0, description="how often jobs are asked how they are")


class Suite2pConfig(_Section):
    """The scheduled suite2p stage: find each finished session's suite2p output and attach it.

    ``folder`` is where suite2p saved its output (the folder holding plane0/, plane1/, ...):
    relative to the session's TIFF folder ("suite2p", "../suite2p"), or an absolute path that may
    use {subject}, {session} and {site}. Files are located by this folder structure only, never
    through the paths suite2p stores inside ops.npy (they name the machine that ran suite2p)."""

    enabled: bool = True
    folder: str = "suite2p"
    interval_seconds: float = Field(300.0, gt=0, description="how often suite2p folders are looked at")
    settle_seconds: float = Field(60.0, ge=0, description="files must be unchanged this long")
    # dF/F = (Fc - F0) / F0 with Fc = F - c * Fneu, F0 a running percentile of Fc.
    neuropil_coefficient: float | None = Field(
        None, ge=0, le=2, description="c; default: suite2p's own setting for the plane, else 0.7")
    baseline_percentile: float = Field(8.0, gt=0, lt=100)
    baseline_window_seconds: float = Field(60.0, gt=0)
    min_baseline: float = Field(1.0, gt=0, description="F0 below this is clamped to it")
    run: Suite2pRunConfig = Suite2pRunConfig()


class StatusConfig(_Section):
    """What rig2nwb shows people besides ``rig2nwb status``: the status page, the per-session
    summary picture and the live preview (files in output.folder, see status_files)."""

    page: bool = Field(True, description="rig2nwb-status.html + .json in output.folder")
    page_interval_seconds: float = Field(
        2.0, ge=0, description="rewrite the page on a change, at most this often")
    summary_picture: bool = Field(True, description="a PNG per finished session")
    preview: bool = Field(True, description="a small PNG of the latest frames while acquiring")
    preview_interval_seconds: float = Field(10.0, gt=0, description="at most this often per session")
    preview_frames: int = Field(100, ge=1, le=10_000, description="mean of this many latest frames")


NotifyKind = Literal["converted", "suite2p", "problem", "warning", "daemon"]
# `warning` is chatty (every header that disagrees with its pages, low disk space): opt in.
DEFAULT_NOTIFY_KINDS: tuple[NotifyKind, ...] = ("converted", "suite2p", "problem", "daemon")


class NotifyTarget(_Section):
    """One apprise URL and the kinds of events sent to it (its apprise tags).

    ``url`` stays as written, ``${NAME}`` references included, so it is safe to show; the URL
    with the secrets filled in (from the environment or ``$CREDENTIALS_DIRECTORY``) is kept
    apart, as a SecretStr that no repr, dump or log line reveals (``secret_url()``)."""

    url: str = Field(min_length=1, description="apprise URL; secrets as ${NAME}")
    tags: list[NotifyKind] = Field(default_factory=lambda: list(DEFAULT_NOTIFY_KINDS), min_length=1)
    _filled: SecretStr | None = PrivateAttr(None)

    def model_post_init(self, context: Any, /) -> None:
        try:
            self._filled = SecretStr(fill_secrets(self.url))
        except SecretProblem:
            self._filled = None  # reported by validate_config (check_paths) or by the notifier

    def secret_url(self) -> str:
        """The URL with its ``${NAME}`` references filled in; SecretProblem if one is unset."""
        if self._filled is None:
            return fill_secrets(self.url)  # raises with the name of what is missing
        return self._filled.get_secret_value()


class NotifyConfig(_Section):
    """Notifications through apprise (see notify.py and docs/notifications.md)."""

    enabled: bool = True
    targets: list[NotifyTarget] = Field(default_factory=list)
    attempts: int = Field(4, ge=1, le=20, description="tries per notification and target")
    retry_delays_seconds: list[NonNegativeFloat] = Field(
        default_factory=lambda: [10.0, 30.0, 90.0], min_length=1,
        description="wait before the 2nd, 3rd, ... try (the last one repeats)")
    timeout_seconds: float = Field(30.0, gt=0, description="one try of one notification")
    stop_flush_seconds: float = Field(
        5.0, ge=0, description="on stop, keep delivering what is pending this long")
    link_prefix: str = Field(
        "", description="shown in place of output.folder in paths (a share or an https URL)")


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    file: Path | None = None
    max_bytes: int = Field(10_000_000, gt=0)
    backups: int = Field(5, ge=0)
    format: Literal["auto", "json", "console"] = "auto"


class Config(_Section):
    rig: RigConfig
    output: OutputConfig
    state: StateConfig
    watch: WatchConfig = WatchConfig()
    completion: CompletionConfig = CompletionConfig()
    append: AppendConfig = AppendConfig()
    service: ServiceConfig = ServiceConfig()
    session: SessionConfig = SessionConfig()
    subject: SubjectConfig = SubjectConfig()
    device: DeviceConfig = DeviceConfig()
    imaging: ImagingConfig = ImagingConfig()
    scan: ScanConfig = ScanConfig()
    trials: TrialsConfig = TrialsConfig()
    suite2p: Suite2pConfig = Suite2pConfig()
    status: StatusConfig = StatusConfig()
    notify: NotifyConfig = NotifyConfig()
    logging: LoggingConfig = LoggingConfig()

    # Compiled patterns, built once: every scan matches thousands of paths against them.
    @property
    def frames_pattern(self) -> Pattern:
        return _compiled(self.rig.frames)

    def pattern(self, text: str) -> Pattern:
        return _compiled(text)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.session.timezone)


_PATTERN_CACHE: dict[str, Pattern] = {}


def _compiled(text: str) -> Pattern:
    pat = _PATTERN_CACHE.get(text)
    if pat is None:
        pat = _PATTERN_CACHE[text] = Pattern.compile(text)
    return pat


