"""Configuration: ``config.toml`` read with tomllib and validated as a whole.

Every problem is reported at once, each with its location (``rig.root: path does not exist``), so a
lab fixes its file in one go instead of one error per restart. Relative paths are resolved
against the folder that holds the config file, so the same file works from any working folder.
"""

from __future__ import annotations

import datetime
import itertools
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PrivateAttr,
    SecretStr,
    ValidationError,
)

from rig2nwb.core.patterns import PLACEHOLDER_NAMES, Pattern, check_pattern, placeholders
from rig2nwb.errors import ConfigError, PatternError, SecretMissing, SecretProblem

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
    from rig2nwb.outputs.notify import instantiate  # apprise is imported only when targets exist

    plugin = instantiate(filled)
    if plugin is None:
        return ["apprise cannot use this URL (unknown service, or parts missing or invalid; see "
                "https://github.com/caronc/apprise/wiki)"]
    shown = plugin.url(privacy=True)
    if not _SECRET_REF.search(url) and shown != plugin.url(privacy=False):
        return [f"holds a secret (token or password) written literally ({shown}); put it in an "
                "environment variable (or a systemd credential) and write ${NAME} in its place"]
    return []


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


def config_warnings(cfg: Config) -> list[str]:
    """Things that are valid but probably not what the lab wants (``check-config`` prints them,
    the daemon logs them at start)."""
    out = []
    if "timezone" not in cfg.session.model_fields_set:
        out.append("session.timezone is not set, so the rig's clock times (TIFF DateTime tags, "
                   "the ScanImage epoch, file times) are taken as UTC; set it to the rig's zone "
                   "(e.g. 'Europe/Berlin'), or a rig in another zone gets wrong start times")
    out += _collision_warnings(cfg.output.nwb_name)
    return out


def _collision_warnings(nwb_name: str) -> list[str]:
    """``{subject}_{session}.nwb`` maps ``mouse1_2024``/``01_05`` and ``mouse1``/``2024_01_05`` to
    one file: placeholders separated by nothing, or by characters that names commonly hold, can
    collide. rig2nwb refuses the second session (nothing is overwritten); this says so early."""
    import string

    parts = list(string.Formatter().parse(nwb_name))
    out = []
    for (_, first, _, _), (between, second, _, _) in itertools.pairwise(parts):
        if first is None or second is None:
            continue
        if not between.strip("_-. "):
            how = (f"are separated only by '{between}', which names may hold too" if between
                   else "are not separated")
            out.append(f"output.nwb_name {nwb_name!r}: {{{first}}} and {{{second}}} {how}, so "
                       f"two sessions can map to one "
                       f"file (e.g. '{'a' + (between or '') + 'b'}' + 'c' and 'a' + "
                       f"'{'b' + (between or '') + 'c'}'); rig2nwb then refuses the second "
                       "session. A distinctive separator (as in sub-{subject}_ses-{session}.nwb) "
                       "avoids it")
    return out


_PATTERN_CACHE: dict[str, Pattern] = {}


def _compiled(text: str) -> Pattern:
    pat = _PATTERN_CACHE.get(text)
    if pat is None:
        pat = _PATTERN_CACHE[text] = Pattern.compile(text)
    return pat


_FRIENDLY = {
    "missing": "missing required key",
    "extra_forbidden": "unknown key (check the spelling; see config.toml for the keys)",
}


MAX_CONFIG_BYTES = 1024 * 1024
MAX_TOML_NESTING = 32  # arrays and inline tables inside each other; real files use 2 or 3


def toml_nesting(text: str) -> int:
    """How deep arrays and inline tables nest in a TOML text (strings and comments skipped).
    tomllib recurses per level, so a few thousand ``[`` raise RecursionError: checked first."""
    depth = deepest = 0
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if c in "\"'":
            triple = text.startswith(c * 3, i)
            quote = c * 3 if triple else c
            i += len(quote)
            while i < n and not text.startswith(quote, i):
                i += 2 if (c == '"' and text[i] == "\\") else 1
            i += len(quote)
            continue
        if c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth = max(0, depth - 1)
        i += 1
    return deepest


def parse_toml(text: str) -> dict[str, Any]:
    """tomllib, after refusing what would make it recurse without bound (ValueError)."""
    if toml_nesting(text) > MAX_TOML_NESTING:
        raise ValueError(f"arrays or tables nested more than {MAX_TOML_NESTING} levels deep")
    try:
        return tomllib.loads(text)
    except RecursionError:  # pragma: no cover - toml_nesting guards it
        raise ValueError("nested too deeply") from None


def load_config(path: Path | str = DEFAULT_CONFIG, *, check_paths: bool = True,
                check_secrets: bool | None = None) -> Config:
    """Read and validate a config file, raising ConfigError listing every problem.
    ``check_secrets`` (default: as ``check_paths``): every ``${NAME}`` of the notification URLs
    must be set here; commands that send nothing do not need the secrets."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(str(path), [f"larger than {MAX_CONFIG_BYTES:,} bytes: is it the "
                                          "right file?"])
        raw = parse_toml(data.decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"cannot read the file: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from None
    except ValueError as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from None
    return validate_config(raw, base=path.resolve().parent, source=str(path), check_paths=check_paths,
                           check_secrets=check_secrets)


def validate_config(
    raw: dict[str, Any], *, base: Path, source: str = "config", check_paths: bool = True,
    check_secrets: bool | None = None,
) -> Config:
    """Validate a parsed config; relative paths are taken relative to ``base``."""
    raw = _resolve_paths(raw, base)
    problems: list[str] = []
    cfg: Config | None = None
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = _FRIENDLY.get(err["type"], err["msg"])
            if err["type"] not in _FRIENDLY and not isinstance(err.get("input"), dict):
                msg += f" (got {err.get('input')!r})"
            problems.append(f"{loc}: {msg}")
    problems += _semantic_problems(raw, check_paths=check_paths,
                                   check_secrets=check_paths if check_secrets is None else check_secrets)
    if problems or cfg is None:
        raise ConfigError(source, sorted(set(problems)))
    return cfg


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for section, key in (("rig", "root"), ("output", "folder"), ("state", "folder"), ("logging", "file")):
        sec = out.get(section)
        if isinstance(sec, dict) and isinstance(sec.get(key), str) and sec[key]:
            p = Path(os.path.expandvars(os.path.expanduser(sec[key])))
            sec[key] = str(p if p.is_absolute() else base / p)
    return out


def _get(raw: dict[str, Any], section: str, key: str) -> Any:
    sec = raw.get(section)
    return sec.get(key) if isinstance(sec, dict) else None


def _semantic_problems(raw: dict[str, Any], *, check_paths: bool, check_secrets: bool) -> list[str]:
    """Checks pydantic cannot express per field: paths on disk, pattern placeholders, timezone."""
    problems: list[str] = []
    if check_paths:
        for section, key, must_exist in (("rig", "root", True), ("output", "folder", True),
                                         ("state", "folder", False)):
            value = _get(raw, section, key)
            if isinstance(value, str) and value:
                problems += [f"{section}.{key}: {m}" for m in _path_problems(Path(value), must_exist)]

    frames = _get(raw, "rig", "frames")
    frames = frames if isinstance(frames, str) else RigConfig.model_fields["frames"].default
    frame_problems = check_pattern(frames, required={"session"})
    problems += [f"rig.frames: {m}" for m in frame_problems]
    frame_names = placeholders(frames) if not frame_problems else set()
    if frame_names and "subject" not in frame_names and not _get(raw, "rig", "subject"):
        problems.append(
            "rig.subject: required when rig.frames has no {subject} placeholder "
            "(the subject id used for every session)"
        )
    # Other patterns may only use what the frames pattern defines (plus the configured subject).
    available = frame_names | {"subject"} if frame_names else set(PLACEHOLDER_NAMES)
    for key in ("scan_file", "trial_file", "end_marker"):
        value = _get(raw, "rig", key)
        if value is None:
            value = RigConfig.model_fields[key].default
        if isinstance(value, str) and value:
            problems += [
                f"rig.{key}: {m}"
                for m in check_pattern(value, required={"session"}, allowed=available)
            ]
    nwb_name = _get(raw, "output", "nwb_name")
    nwb_name = nwb_name if isinstance(nwb_name, str) else OutputConfig.model_fields["nwb_name"].default
    for msg in check_pattern(nwb_name, required={"subject", "session"}, allowed=available):
        problems.append(f"output.nwb_name: {msg}")
    if "/" in nwb_name or any(c in nwb_name for c in "*?["):
        problems.append("output.nwb_name: must be a plain file name (no folders, no wildcards)")
    elif not nwb_name.endswith(".nwb"):
        problems.append("output.nwb_name: must end with .nwb")

    tzname = _get(raw, "session", "timezone")
    if isinstance(tzname, str):
        try:
            ZoneInfo(tzname)
        except (ZoneInfoNotFoundError, ValueError):
            problems.append(f"session.timezone: unknown time zone {tzname!r} (e.g. 'Europe/Berlin')")
    columns = _get(raw, "trials", "columns")
    if isinstance(columns, list) and all(isinstance(c, str) for c in columns):
        named = [c for c in columns if c not in ("", "-")]
        for required in ("stim_on", "stim_dur"):
            if required not in named:
                problems.append(f"trials.columns: needs a '{required}' column")
        dupes = sorted({c for c in named if named.count(c) > 1})
        if dupes:
            problems.append(f"trials.columns: repeated column name(s) {', '.join(dupes)}")
        reserved = sorted(set(named) & {"start_time", "stop_time", "stim_off", "id"})
        if reserved:
            problems.append(f"trials.columns: {', '.join(reserved)} is computed by rig2nwb; "
                            "use another name")
    targets = _get(raw, "notify", "targets")
    for i, target in enumerate(targets if isinstance(targets, list) else []):
        url = target.get("url") if isinstance(target, dict) else None
        if isinstance(url, str) and url:
            problems += [f"notify.targets[{i}].url: {m}"
                         for m in notify_url_problems(url, check_environment=check_secrets)]
    folder = _get(raw, "suite2p", "folder")
    if isinstance(folder, str):
        problems += [f"suite2p.folder: {m}" for m in _suite2p_folder_problems(folder, available)]
    batch = _get(raw, "append", "batch_frames")
    commit = _get(raw, "append", "commit_every_frames")
    if isinstance(batch, int) and isinstance(commit, int) and commit < batch:
        problems.append("append.commit_every_frames: must be >= append.batch_frames")
    return problems


def _suite2p_folder_problems(folder: str, available: set[str]) -> list[str]:
    if not folder.strip():
        return ["must not be empty (default: suite2p)"]
    try:
        names = placeholders(folder)
    except PatternError as exc:
        return [str(exc)]
    unknown = sorted(names - available)
    if unknown:
        return ["unknown placeholder(s) " + ", ".join("{" + n + "}" for n in unknown)]
    if any(c in folder for c in "*?["):
        return ["must be a folder, not a wildcard pattern"]
    return []


def _path_problems(path: Path, must_exist: bool) -> list[str]:
    if path.exists():
        if not path.is_dir():
            return [f"not a folder: {path}"]
        return []
    if must_exist:
        return [f"path does not exist: {path}"]
    if not path.parent.is_dir():
        return [f"cannot be created, its parent folder does not exist: {path}"]
    return []
