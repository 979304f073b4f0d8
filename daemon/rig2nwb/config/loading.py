"""Reading config.toml: size and nesting limits, TOML parsing, validation against the schema,
and the checks that need more than one field (paths that must exist, patterns, secrets), each
problem named by its section and key (``rig.root: path does not exist``), all at once, so a lab
fixes its file in one go instead of one error per restart. Relative paths are resolved against
the folder that holds the config file, so the same file works from any working folder."""

from __future__ import annotations

import itertools
import os
import tomllib
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    ValidationError,
)

from rig2nwb.config.schema import DEFAULT_CONFIG, Config, OutputConfig, RigConfig
from rig2nwb.config.secrets import (
    notify_url_problems,
)
from rig2nwb.core.jobs import command_problems
from rig2nwb.core.patterns import PLACEHOLDER_NAMES, check_pattern, placeholders
from rig2nwb.errors import ConfigError, PatternError


def config_warnings(cfg: Config) -> list[str]:
    """Things that are valid but probably not what the lab wants (``check-config`` prints them,
    the daemon logs them at start)."""
    out = []
    if "timezone" not in cfg.session.model_fields_set:
        out.append("session.timezone is not set, so the rig's clock times (TIFF DateTime tags, "
                   "the ScanImage epoch, file times) are taken as UTC; set it to the rig's zone "
                   "(e.g. 'Europe/Berlin'), or a rig in another zone gets wrong start times")
    out += _collision_warnings(cfg.output.nwb_name)
    if cfg.suite2p.run.executor != "none" and not Path(cfg.suite2p.folder).is_absolute() \
            and "{" not in cfg.suite2p.folder.split("/")[0]:
        out.append(f"suite2p.folder {cfg.suite2p.folder!r} is inside the rig folder, so the "
                   f"{cfg.suite2p.run.executor} suite2p jobs write there (beside the session's "
                   "TIFFs; rig2nwb itself never changes a rig file); the job's user needs write "
                   "access to the rig share. An absolute folder elsewhere "
                   "(/data/suite2p/{subject}/{session}) keeps the share untouched")
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
            sec[key] = _resolved(sec[key], base)
    s2p = out.get("suite2p")
    run = s2p.get("run") if isinstance(s2p, dict) else None
    if isinstance(s2p, dict) and isinstance(run, dict) and isinstance(run.get("settings"), str) \
            and run["settings"]:
        s2p["run"] = {**run, "settings": _resolved(run["settings"], base)}
    return out


def _resolved(value: str, base: Path) -> str:
    p = Path(os.path.expandvars(os.path.expanduser(value)))
    return str(p if p.is_absolute() else base / p)


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
    problems += _run_problems(raw, check_paths=check_paths)
    batch = _get(raw, "append", "batch_frames")
    commit = _get(raw, "append", "commit_every_frames")
    if isinstance(batch, int) and isinstance(commit, int) and commit < batch:
        problems.append("append.commit_every_frames: must be >= append.batch_frames")
    return problems


# sbatch options rig2nwb sets itself: the job is found by its name and read from its folder.
_OWN_SBATCH_OPTIONS = ("--output", "-o", "--job-name", "-J", "--parsable", "--chdir", "-D",
                       "--error", "-e", "--wrap")


def _run_problems(raw: dict[str, Any], *, check_paths: bool) -> list[str]:
    s2p = raw.get("suite2p")
    run = s2p.get("run") if isinstance(s2p, dict) else None
    if not isinstance(run, dict):
        return []
    problems = []
    command = run.get("command")
    if isinstance(command, list) and all(isinstance(a, str) for a in command):
        problems += [f"suite2p.run.command: {m}" for m in command_problems(command)]
    options = run.get("slurm_options")
    for i, opt in enumerate(options if isinstance(options, list) else []):
        if not isinstance(opt, str):
            continue
        if not opt.startswith("-"):
            problems.append(f"suite2p.run.slurm_options[{i}]: {opt!r} is not an option; write "
                            "each as one string, e.g. '--partition=gpu' (not '--partition', "
                            "'gpu')")
        elif opt.split("=", 1)[0] in _OWN_SBATCH_OPTIONS or opt[:2] in _OWN_SBATCH_OPTIONS:
            problems.append(f"suite2p.run.slurm_options[{i}]: {opt!r} is set by rig2nwb (each "
                            "job's name, folder and log are its own)")
    settings = run.get("settings")
    if isinstance(settings, str) and settings:
        path = Path(settings)
        if path.suffix not in (".npy", ".json", ".toml"):
            problems.append(f"suite2p.run.settings: {path.name}: a settings file is .npy "
                            "(suite2p's own), .json or .toml")
        elif check_paths and not path.is_file():
            problems.append(f"suite2p.run.settings: no such file: {path}")
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
