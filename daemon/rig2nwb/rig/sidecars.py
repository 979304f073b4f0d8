"""NWB metadata of one session: config.toml defaults overridden by ``rig2nwb.toml`` sidecars.

For a session whose TIFFs are in folder F inside the rig root R, every ``rig2nwb.toml`` in R and
in each folder from R down to F is read, outermost first; a deeper file overrides a shallower one
key by key within a section (a list such as ``experimenter`` is replaced as a whole). A sidecar
holds only ``[session]``, ``[subject]``, ``[device]`` and ``[imaging]``, with the keys and the
validation of those sections of config.toml, except ``session.timezone`` (rig-wide: config.toml
only), and ``[suite2p] settings``: the suite2p settings file for the sessions below it (a path
relative to the sidecar's folder, inside the rig folder; see processing.settingsfile). What
the data itself says (the ScanImage header) overrides all of this; the engine does that.
Sidecars are only read, never followed out of the rig folder.

``dandi_problems`` lists what DANDI requires and is missing or malformed; ``dandi_advice`` lists
best-practice suggestions that do not block an upload.
"""

from __future__ import annotations

import datetime
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rig2nwb.config.loading import parse_toml
from rig2nwb.config.schema import Config, DeviceConfig, ImagingConfig, SessionConfig, SubjectConfig
from rig2nwb.errors import MetadataProblem, UnsafeRigPath
from rig2nwb.rig.safeopen import FolderFilter, lstat_rig, read_rig_bytes, walk_rig
from rig2nwb.states import Problem

SIDECAR_NAME = "rig2nwb.toml"
MAX_SIDECAR_BYTES = 1024 * 1024


class Suite2pSidecar(BaseModel):
    """A sidecar's ``[suite2p]``: only what differs between subjects or sessions."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    settings: str = Field("", description="suite2p settings file for the sessions below")


SECTIONS: dict[str, type[BaseModel]] = {
    "session": SessionConfig, "subject": SubjectConfig, "device": DeviceConfig,
    "imaging": ImagingConfig, "suite2p": Suite2pSidecar,
}
RIG_WIDE = {("session", "timezone")}


@dataclass(frozen=True)
class SessionMetadata:
    session: SessionConfig
    subject: SubjectConfig
    device: DeviceConfig
    imaging: ImagingConfig
    sources: tuple[str, ...]
    suite2p: Suite2pSidecar = field(default_factory=Suite2pSidecar)
    # "section.key" -> where its value was set ("config.toml" or a sidecar's rig-relative path);
    # keys left at their built-in default are absent.
    origins: Mapping[str, str] = field(default_factory=dict, compare=False)


def config_metadata(cfg: Config) -> SessionMetadata:
    """The config.toml defaults alone (a session with no sidecar)."""
    origins = {f"{name}.{key}": "config.toml"
               for name, model in _config_models(cfg).items() for key in model.model_fields_set}
    return SessionMetadata(cfg.session, cfg.subject, cfg.device, cfg.imaging, (), origins=origins)


def _config_models(cfg: Config) -> dict[str, BaseModel]:
    """Each sidecar section's config.toml value (``[suite2p]``'s lives in suite2p.run)."""
    return {name: Suite2pSidecar() if name == "suite2p" else getattr(cfg, name)
            for name in SECTIONS}


def sidecar_paths(cfg: Config, tiff_folder: Path) -> list[Path]:
    """Existing sidecars (broken or foreign symlinks included) for a session folder, outermost
    first. Raises ValueError when the folder is not inside the rig root."""
    return [p for p in _candidates(cfg.rig.root, tiff_folder) if os.path.lexists(p)]


def sidecar_stamp(cfg: Config, tiff_folder: Path) -> tuple[tuple[str, int, int], ...]:
    """(rig-relative path, size, mtime_ns) of each existing sidecar: changes when one is added,
    removed or edited (a link is stat'ed as a link: it is refused when read). Never raises for
    unreadable files."""
    root = cfg.rig.root
    out = []
    for path in sidecar_paths(cfg, tiff_folder):
        try:
            st = lstat_rig(root, path)
            out.append((_rel(path, root), st.st_size, st.st_mtime_ns))
        except (OSError, UnsafeRigPath):
            out.append((_rel(path, root), -1, -1))
    return tuple(out)


def load_metadata(cfg: Config, tiff_folder: Path) -> SessionMetadata:
    """The session's metadata: config.toml defaults, then each sidecar, outermost first.

    Raises MetadataProblem for the first (outermost) sidecar that cannot be used, and ValueError
    when ``tiff_folder`` is not inside the rig root."""
    root = cfg.rig.root
    models: dict[str, Any] = _config_models(cfg)
    merged: dict[str, dict[str, Any]] = {name: m.model_dump() for name, m in models.items()}
    origins = dict(config_metadata(cfg).origins)
    sources: list[str] = []
    for path in sidecar_paths(cfg, tiff_folder):
        rel = _rel(path, root)
        data = _read_sidecar(path, root, rel)
        problems = _structure_problems(data)
        given = {name: {k: v for k, v in values.items() if (name, k) not in RIG_WIDE}
                 for name, values in data.items() if name in SECTIONS and isinstance(values, dict)}
        layer = {name: {**merged[name], **given.get(name, {})} for name in SECTIONS}
        for name in given:
            try:
                models[name] = SECTIONS[name].model_validate(layer[name])
            except ValidationError as exc:
                problems += [_format_error(name, err) for err in exc.errors()]
        if problems:
            raise MetadataProblem(rel, problems)
        merged = layer
        for name, values in given.items():
            origins.update({f"{name}.{key}": rel for key in values})
        sources.append(rel)
    return SessionMetadata(models["session"], models["subject"], models["device"],
                           models["imaging"], tuple(sources), models["suite2p"], origins)


# -- reading -------------------------------------------------------------------------------------


def _candidates(root: Path, tiff_folder: Path) -> list[Path]:
    root = Path(os.path.normpath(os.path.abspath(root)))
    folder = Path(os.path.normpath(os.path.abspath(tiff_folder)))
    if not folder.is_relative_to(root):
        raise ValueError(f"{tiff_folder} is not inside the rig folder {root}")
    out = [root / SIDECAR_NAME]
    current = root
    for part in folder.relative_to(root).parts:
        current = current / part
        out.append(current / SIDECAR_NAME)
    return out


def _rel(path: Path, root: Path) -> str:
    for base in (Path(os.path.normpath(os.path.abspath(root))), Path(os.path.realpath(root))):
        if path.is_relative_to(base):
            return path.relative_to(base).as_posix()
    return path.as_posix()  # pragma: no cover  (_candidates only builds paths under the root)


def _read_sidecar(path: Path, root: Path, rel: str) -> dict[str, Any]:
    # Through rigfs: no links anywhere on the way (a link can be swapped to point elsewhere at
    # any time), no FIFOs (which would hang the worker), a bounded size and nesting.
    try:
        raw = read_rig_bytes(root, path, max_bytes=MAX_SIDECAR_BYTES)
    except UnsafeRigPath as exc:
        if exc.code == Problem.TOO_LARGE:
            raise MetadataProblem(rel, [_too_big(MAX_SIDECAR_BYTES + 1)]) from None
        if exc.code == Problem.NOT_REGULAR:
            raise MetadataProblem(rel, ["is not a regular file"]) from None
        raise MetadataProblem(rel, [exc.message.removeprefix(f"{rel}: ").removeprefix(f"{rel} ")]) \
            from None
    except FileNotFoundError:
        raise MetadataProblem(rel, ["cannot be read: it vanished"]) from None
    except OSError as exc:
        raise MetadataProblem(rel, [f"cannot be read: {exc.strerror or exc}"]) from None
    try:
        text = raw.decode("utf-8-sig")  # tolerate the BOM some Windows editors write
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise MetadataProblem(rel, [
            f"line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save it as UTF-8"]) from None
    try:
        return parse_toml(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", msg)
        where = f"line {m[2]}: " if m else ""
        detail = f"{m[1]}, column {m[3]}" if m else msg
        raise MetadataProblem(rel, [f"{where}not valid TOML ({detail})"]) from None
    except ValueError as exc:
        raise MetadataProblem(rel, [f"not valid TOML here: {exc}"]) from None


def _too_big(size: int) -> str:
    return (f"is {size} bytes, larger than the 1 MB ({MAX_SIDECAR_BYTES} bytes) a sidecar may be; "
            "is it the right file?")


def _structure_problems(data: dict[str, Any]) -> list[str]:
    allowed = ", ".join(f"[{s}]" for s in SECTIONS)
    problems = []
    for name, value in data.items():
        if not isinstance(value, dict):
            problems.append(f"{name}: a key outside any section; a sidecar has only {allowed}")
        elif name not in SECTIONS:
            problems.append(f"unknown section [{name}] (a sidecar may have {allowed})")
        else:
            problems += [f"{name}.{key} cannot be set in a sidecar (it is rig-wide: set it in "
                         "config.toml)" for key in value if (name, key) in RIG_WIDE]
    return problems


def _format_error(section: str, err: Any) -> str:
    loc = ".".join([section, *(str(p) for p in err["loc"])])
    if err["type"] == "extra_forbidden":
        return (f"{loc}: unknown key (a sidecar takes the keys of the same section of "
                "config.toml; check the spelling)")
    msg = str(err["msg"])
    if not isinstance(err.get("input"), dict):
        msg += f" (got {err.get('input')!r})"
    return f"{loc}: {msg}"


# -- DANDI ---------------------------------------------------------------------------------------

_NUM = r"\d+(?:\.\d+)?"
_DURATION = re.compile(
    rf"P(?=\d|T\d)(?:({_NUM})Y)?(?:({_NUM})M)?(?:({_NUM})W)?(?:({_NUM})D)?"
    rf"(?:T(?=\d)(?:({_NUM})H)?(?:({_NUM})M)?(?:({_NUM})S)?)?")
_DAYS = (365.25, 30.4375, 7.0, 1.0, 1 / 24, 1 / 1440, 1 / 86400)  # Y M W D H M S, for ordering
_BINOMIAL = re.compile(r"[A-Z][a-z]+ [a-z][a-z-]*(?: \S+)*")
_NCBI = re.compile(r"http://purl\.obolibrary\.org/obo/NCBITaxon_\d+")
_DOI = ("doi:", "https://doi.org/", "http://dx.doi.org/", "https://dx.doi.org/")
AGE_EXAMPLES = "e.g. P90D, P12W, P3M, P1Y2M, a range P90D/P120D or an open range P90D/"


def iso_duration_days(text: str) -> float | None:
    """Approximate days of an ISO 8601 duration (``P90D``, ``P1Y2M``, ``PT12H``), None if invalid."""
    m = _DURATION.fullmatch(text)
    if m is None:
        return None
    return sum(float(v) * d for v, d in zip(m.groups(), _DAYS, strict=True) if v is not None)


def age_problem(age: str) -> str | None:
    """Why ``age`` is not an age DANDI accepts (a duration, ``lower/upper`` or ``lower/``)."""
    lower, slash, upper = age.partition("/")
    low = iso_duration_days(lower)
    if low is None:
        return f"{age!r} is not an ISO 8601 duration ({AGE_EXAMPLES})"
    if slash and upper:
        high = iso_duration_days(upper)
        if high is None:
            return f"{age!r}: the upper bound {upper!r} is not an ISO 8601 duration ({AGE_EXAMPLES})"
        if high < low:
            return f"{age!r}: the lower bound is larger than the upper bound"
    return None


def _where(meta: SessionMetadata, key: str) -> str:
    origin = meta.origins.get(key)
    if origin is not None:
        return f"set in {origin}"
    section = key.split(".")[0]
    return f"set it in [{section}] of config.toml or a {SIDECAR_NAME}"


def dandi_problems(meta: SessionMetadata, subject_id: str, timezone: str) -> list[str]:
    """What DANDI requires and this session's metadata lacks, one ``field: problem (where)`` line
    each. The NWB identifier is always generated by rig2nwb, so it is not checked."""
    problems = []
    sub, ses = meta.subject, meta.session
    if not subject_id.strip():
        problems.append("subject id: empty (it comes from the {subject} folder name, or "
                        "rig.subject in config.toml)")
    if not sub.species.strip():
        problems.append(f"subject.species: missing; a Latin name such as 'Mus musculus' or an "
                        f"NCBI taxonomy URL ({_where(meta, 'subject.species')})")
    elif not (_BINOMIAL.fullmatch(sub.species) or _NCBI.fullmatch(sub.species)):
        problems.append(f"subject.species: {sub.species!r} is neither a Latin binomial such as "
                        "'Mus musculus' nor a URL such as 'http://purl.obolibrary.org/obo/"
                        f"NCBITaxon_10090' ({_where(meta, 'subject.species')})")
    if sub.sex not in ("M", "F", "U", "O"):  # pragma: no cover  (the model already refuses it)
        problems.append(f"subject.sex: {sub.sex!r} is not M, F, U or O ({_where(meta, 'subject.sex')})")
    if sub.age:
        why = age_problem(sub.age)
        if why:
            problems.append(f"subject.age: {why} ({_where(meta, 'subject.age')})")
    elif sub.date_of_birth is None:
        problems.append(f"subject.age: missing; an ISO 8601 duration ({AGE_EXAMPLES}) or "
                        f"subject.date_of_birth is required ({_where(meta, 'subject.age')})")
    if sub.date_of_birth is not None and sub.date_of_birth > datetime.date.today():
        problems.append(f"subject.date_of_birth: {sub.date_of_birth} is in the future "
                        f"({_where(meta, 'subject.date_of_birth')})")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(f"session.timezone: unknown time zone {timezone!r}; the session start "
                        "time needs one (an IANA name such as 'Europe/Berlin', in config.toml)")
    if not ses.description.strip():
        problems.append(f"session.description: empty ({_where(meta, 'session.description')})")
    return problems


def dandi_advice(meta: SessionMetadata) -> list[str]:
    """DANDI / NWB best-practice suggestions; they never block an upload."""
    advice = []
    ses = meta.session
    if not ses.experimenter:
        advice.append("session.experimenter: nobody listed; DANDI credits experimenters as "
                      f"'Last, First' ({_where(meta, 'session.experimenter')})")
    for name in ses.experimenter:
        if "," not in name:
            advice.append(f"session.experimenter: {name!r} is not in the form 'Last, First' "
                          f"({_where(meta, 'session.experimenter')})")
    for pub in ses.related_publications:
        if not pub.startswith(_DOI):
            advice.append(f"session.related_publications: {pub!r} is not a DOI ('doi:10...' or "
                          f"'https://doi.org/10...') ({_where(meta, 'session.related_publications')})")
    return advice


# -- check-config --------------------------------------------------------------------------------

MAX_FOLDERS = 10_000
MAX_LISTED = 20


def find_sidecars(root: Path, max_folders: int = MAX_FOLDERS,
                  folders: FolderFilter | None = None) -> tuple[list[Path], bool]:
    """Every ``rig2nwb.toml`` under ``root`` in the folders the layout can reach (``folders``;
    default: any folder), never through links, top-down in name order, iteratively (a planted
    tree 1,200 folders deep is no RecursionError), and whether the walk stopped at
    ``max_folders`` folders."""
    found: list[Path] = []
    for count, (parts, entries) in enumerate(walk_rig(root, root, folders or _ANY_FOLDER), 1):
        if count > max_folders:
            return found, True
        if any(e.name == SIDECAR_NAME and not e.is_dir for e in entries):
            found.append(root.joinpath(*parts, SIDECAR_NAME))
    return found, False


class _AnyFolder(FolderFilter):
    def __init__(self) -> None:
        super().__init__([])
        self.max_depth = 64

    def may_hold(self, rel_parts: list[str]) -> bool:
        return True


_ANY_FOLDER = _AnyFolder()


def readiness_report(cfg: Config) -> tuple[list[str], int]:
    """The "DANDI readiness" lines of ``check-config`` and how many problems they list (invalid
    sidecars and missing/malformed required fields; advice is not counted)."""
    uses_folder = "subject" in cfg.frames_pattern.names
    subject_id = "{subject}" if uses_folder else cfg.rig.subject
    who = ("subject id from the {subject} folder names" if uses_folder
           else f"subject id {cfg.rig.subject!r} from rig.subject")
    lines = ["DANDI readiness:"]
    n_problems = 0
    advice: list[str] = []

    def add(head: str, problems: list[str], meta: SessionMetadata | None) -> None:
        nonlocal n_problems
        if meta is not None:
            advice.extend(a for a in dandi_advice(meta) if a not in advice)
        if problems:
            n_problems += len(problems)
            lines.append(f"  {head}:")
            lines.extend(f"    - {p}" for p in problems)

    defaults = config_metadata(cfg)
    base = dandi_problems(defaults, subject_id, cfg.session.timezone)
    add(f"config.toml defaults ({who}; used where no {SIDECAR_NAME} overrides them)", base, defaults)
    if not base:
        lines.append(f"  config.toml defaults ({who}): complete")

    sidecars, truncated = find_sidecars(cfg.rig.root, folders=FolderFilter([cfg.rig.frames]))
    broken: set[str] = set()
    bad_files = 0
    for path in sidecars:
        rel = _rel(path, cfg.rig.root)
        head = rel
        try:
            meta = load_metadata(cfg, path.parent)
            problems = dandi_problems(meta, subject_id, cfg.session.timezone)
            if len(meta.sources) > 1:
                head = f"{rel} (over {', '.join(meta.sources[:-1])})"
        except MetadataProblem as exc:
            if exc.file in broken:
                continue  # an outer sidecar is invalid: reported once, with that file
            broken.add(exc.file)
            meta, problems = None, list(exc.problems)
            head = f"{exc.file} is invalid"
        if problems:
            bad_files += 1
            if bad_files > MAX_LISTED:
                n_problems += len(problems)
                continue
        add(head, problems, meta)
    if bad_files > MAX_LISTED:
        lines.append(f"  ... and {bad_files - MAX_LISTED} more {SIDECAR_NAME} file(s) with problems")
    if sidecars:
        lines.append(f"  {len(sidecars)} {SIDECAR_NAME} file(s) under {cfg.rig.root}: "
                     f"{len(sidecars) - bad_files} complete, {bad_files} with problems")
    else:
        lines.append(f"  no {SIDECAR_NAME} files under {cfg.rig.root}")
    if truncated:
        lines.append(f"  (stopped looking for {SIDECAR_NAME} after {MAX_FOLDERS} folders)")
    if advice:
        lines.append("  advice (best practice, not required):")
        lines.extend(f"    - {a}" for a in advice)
    if n_problems:
        lines.append(f"{n_problems} problem(s): the daemon runs, but its NWB files will not pass "
                     "DANDI validation until they are fixed")
    else:
        lines.append("complete: every field DANDI requires will be present")
    return lines, n_problems
