"""Session metadata: config.toml defaults < rig2nwb.toml sidecars (outer to inner), sidecar
errors naming the file, DANDI readiness checks and `rig2nwb check-config`."""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rig2nwb.commands.cli import main
from rig2nwb.errors import MetadataProblem
from rig2nwb.rig.sidecars import (
    SIDECAR_NAME,
    SessionMetadata,
    config_metadata,
    dandi_advice,
    dandi_problems,
    load_metadata,
    sidecar_paths,
    sidecar_stamp,
)
from rig2nwb.testing.labs import Lab
from rig2nwb.testing.paths import REPO

GOOD_SUBJECT = {"species": "Mus musculus", "sex": "F", "age": "P90D"}


def sidecar(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SIDECAR_NAME
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problem(lab: Lab, folder: Path) -> MetadataProblem:
    with pytest.raises(MetadataProblem) as info:
        load_metadata(lab.config(), folder)
    return info.value


# -- precedence ----------------------------------------------------------------------------------


def test_config_then_subject_then_session_sidecar_key_by_key(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(
        session={"description": "config description", "lab": "Config Lab",
                 "experimenter": ["Doe, Jane"]},
        subject={"sex": "U", "age": "P60D", "strain": "C57BL/6J", "genotype": "wt"},
        imaging={"indicator": "GCaMP6s", "location": "VISp"},
    )
    s1, s2 = lab.session_dir("s1", "mouse01"), lab.session_dir("s2", "mouse01")
    other = lab.session_dir("s1", "mouse02")
    for d in (s1, s2, other):
        d.mkdir(parents=True)
    sidecar(lab.root, """
        [device]
        name = "MOM-2"
        """)
    sidecar(lab.root / "mouse01", """
        [subject]
        sex = "F"
        age = "P100D"
        strain = "Ai148"

        [session]
        experimenter = ["Roe, Rick", "Poe, Pat"]
        """)
    sidecar(s1, """
        [subject]
        age = "P120D"
        weight = "25 g"
        date_of_birth = 2024-01-05

        [imaging]
        location = "VISl"

        [session]
        keywords = ["V1", "gratings"]
        """)

    meta = load_metadata(lab.config(), s1)
    assert meta.sources == ("rig2nwb.toml", "mouse01/rig2nwb.toml",
                            "mouse01/tif/site1/s1/rig2nwb.toml")
    assert meta.subject.species == "Mus musculus"  # built-in default
    assert meta.subject.genotype == "wt"  # config
    assert meta.subject.sex == "F"  # subject sidecar
    assert meta.subject.strain == "Ai148"  # subject sidecar
    assert meta.subject.age == "P120D"  # session sidecar beats subject sidecar
    assert meta.subject.weight == "25 g"
    assert meta.subject.date_of_birth == datetime.date(2024, 1, 5)
    assert meta.session.description == "config description"
    assert meta.session.lab == "Config Lab"
    assert meta.session.experimenter == ["Roe, Rick", "Poe, Pat"]  # a list is replaced whole
    assert meta.session.keywords == ["V1", "gratings"]
    assert meta.session.timezone == "Europe/Berlin"
    assert meta.imaging.location == "VISl"
    assert meta.imaging.indicator == "GCaMP6s"
    assert meta.device.name == "MOM-2"
    assert meta.device.manufacturer == "Sutter Instrument"
    assert meta.origins["subject.age"] == "mouse01/tif/site1/s1/rig2nwb.toml"
    assert meta.origins["subject.sex"] == "mouse01/rig2nwb.toml"
    assert meta.origins["subject.genotype"] == "config.toml"
    assert "subject.species" not in meta.origins

    # Another session of the same subject: only the subject and rig sidecars.
    meta2 = load_metadata(lab.config(), s2)
    assert meta2.sources == ("rig2nwb.toml", "mouse01/rig2nwb.toml")
    assert (meta2.subject.age, meta2.subject.sex, meta2.subject.weight) == ("P100D", "F", "")
    assert meta2.subject.date_of_birth is None
    assert meta2.imaging.location == "VISp"

    # Another subject: the rig-wide sidecar over the config.
    meta3 = load_metadata(lab.config(), other)
    assert meta3.sources == ("rig2nwb.toml",)
    assert (meta3.subject.age, meta3.subject.sex, meta3.subject.strain) == ("P60D", "U", "C57BL/6J")
    assert meta3.session.experimenter == ["Doe, Jane"]
    assert meta3.device.name == "MOM-2"


def test_no_sidecar_gives_the_config(lab: Lab) -> None:
    folder = lab.session_dir()
    folder.mkdir(parents=True)
    cfg = lab.config()
    meta = load_metadata(cfg, folder)
    assert meta.sources == ()
    assert (meta.session, meta.subject, meta.device, meta.imaging) == (
        cfg.session, cfg.subject, cfg.device, cfg.imaging)
    assert sidecar_paths(cfg, folder) == []
    assert sidecar_stamp(cfg, folder) == ()


def test_folder_outside_the_rig_is_refused(lab: Lab, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not inside the rig folder"):
        load_metadata(lab.config(), tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="not inside the rig folder"):
        sidecar_paths(lab.config(), lab.root / ".." / "nwb")


def test_stamp_changes_when_a_sidecar_is_added_edited_or_removed(lab: Lab) -> None:
    folder = lab.session_dir()
    folder.mkdir(parents=True)
    cfg = lab.config()
    empty = sidecar_stamp(cfg, folder)
    path = sidecar(lab.root / "m1", '[subject]\nsex = "F"\n')
    added = sidecar_stamp(cfg, folder)
    assert [rel for rel, _, _ in added] == ["m1/rig2nwb.toml"]
    assert added[0][1] == path.stat().st_size
    path.write_text('[subject]\nsex = "M"\nage = "P1D"\n')
    edited = sidecar_stamp(cfg, folder)
    assert sidecar_paths(cfg, folder) == [path]
    path.unlink()
    assert len({empty, added, edited}) == 3
    assert sidecar_stamp(cfg, folder) == empty


# -- sidecar errors ------------------------------------------------------------------------------


def test_bad_toml_names_file_and_line(lab: Lab) -> None:
    folder = lab.session_dir()
    sidecar(lab.root / "m1", '[subject]\nsex = "F"\nage = P90D\n')
    exc = problem(lab, folder)
    assert exc.file == "m1/rig2nwb.toml"
    assert exc.message.startswith("m1/rig2nwb.toml: line 3: not valid TOML (")
    assert str(exc) == exc.message


def test_bad_value_is_validated_like_the_config(lab: Lab) -> None:
    folder = lab.session_dir()
    sidecar(folder, """
        [subject]
        sex = "male"

        [imaging]
        frame_rate = -1
        """)
    exc = problem(lab, folder)
    assert exc.file == "m1/tif/site1/s1/rig2nwb.toml"
    assert ("m1/tif/site1/s1/rig2nwb.toml: subject.sex: Input should be 'M', 'F', 'U' or 'O' "
            "(got 'male')") in exc.message
    assert "imaging.frame_rate: Input should be greater than 0 (got -1)" in exc.message


def test_date_of_birth_must_be_a_date(lab: Lab) -> None:
    sidecar(lab.root, '[subject]\ndate_of_birth = "last spring"\n')
    exc = problem(lab, lab.session_dir())
    assert exc.message.startswith("rig2nwb.toml: subject.date_of_birth: ")
    assert "'last spring'" in exc.message


def test_unknown_key_section_and_loose_key(lab: Lab) -> None:
    sidecar(lab.root / "m1", """
        species = "Mus musculus"

        [subject]
        sexx = "F"

        [foo]
        bar = 1

        [rig]
        root = "/elsewhere"
        """)
    exc = problem(lab, lab.session_dir())
    assert exc.file == "m1/rig2nwb.toml"
    assert "subject.sexx: unknown key" in exc.message
    assert "unknown section [foo]" in exc.message
    assert "unknown section [rig]" in exc.message  # only the four metadata sections
    assert "species: a key outside any section" in exc.message
    assert len(exc.problems) == 4


def test_timezone_is_rig_wide(lab: Lab) -> None:
    sidecar(lab.root / "m1", '[session]\ntimezone = "UTC"\n')
    exc = problem(lab, lab.session_dir())
    assert exc.message == ("m1/rig2nwb.toml: session.timezone cannot be set in a sidecar "
                           "(it is rig-wide: set it in config.toml)")


def test_outer_invalid_sidecar_is_reported_first(lab: Lab) -> None:
    sidecar(lab.root / "m1", '[subject]\nsex = 3\n')
    sidecar(lab.session_dir(), "[[[")
    assert problem(lab, lab.session_dir()).file == "m1/rig2nwb.toml"


def test_symlink_outside_the_rig_is_refused(lab: Lab, tmp_path: Path) -> None:
    outside = tmp_path / "outside.toml"
    outside.write_text('[subject]\nsex = "F"\n')
    (lab.root / "m1").mkdir()
    (lab.root / "m1" / SIDECAR_NAME).symlink_to(outside)
    exc = problem(lab, lab.session_dir())
    assert exc.file == "m1/rig2nwb.toml"
    assert "pointing outside the rig folder" in exc.message
    # A linked subject folder that leads outside is refused the same way.
    shutil.rmtree(lab.root / "m1")
    elsewhere = tmp_path / "elsewhere"
    sidecar(elsewhere, '[subject]\nsex = "F"\n')
    (lab.root / "m2").symlink_to(elsewhere, target_is_directory=True)
    assert "pointing outside the rig folder" in problem(lab, lab.root / "m2").message


def test_symlink_inside_the_rig_is_refused_too(lab: Lab) -> None:
    """Decided with the hostile-share work: no link in the rig folder is followed, not even one
    pointing inside it, since anyone may switch it to point elsewhere between a look and a
    read. The refusal says where it points."""
    shared = sidecar(lab.root / "shared", '[subject]\nsex = "M"\nage = "P30D"\n')
    (lab.root / "m1").mkdir()
    (lab.root / "m1" / SIDECAR_NAME).symlink_to(shared)
    exc = problem(lab, lab.session_dir())
    assert exc.file == "m1/rig2nwb.toml"
    assert "is a symbolic link (to " in exc.message and "reads nothing through links" in exc.message


def test_broken_symlink_and_folder_named_like_a_sidecar(lab: Lab) -> None:
    (lab.root / "m1").mkdir()
    (lab.root / "m1" / SIDECAR_NAME).symlink_to(lab.root / "missing.toml")
    assert "broken symbolic link" in problem(lab, lab.session_dir()).message
    (lab.root / "m1" / SIDECAR_NAME).unlink()
    (lab.root / "m1" / SIDECAR_NAME).mkdir()
    assert problem(lab, lab.session_dir()).message == "m1/rig2nwb.toml: is not a regular file"


def test_size_limit(lab: Lab) -> None:
    limit = 1024 * 1024
    body = '[subject]\nsex = "F"\n'
    path = sidecar(lab.root, body + "#" * (limit - len(body) - 1) + "\n")
    assert path.stat().st_size == limit
    assert load_metadata(lab.config(), lab.session_dir()).subject.sex == "F"
    path.write_text(body + "#" * (limit - len(body)) + "\n")
    exc = problem(lab, lab.session_dir())
    assert exc.message.startswith(f"rig2nwb.toml: is {limit + 1} bytes, larger than the 1 MB")


def test_not_utf8(lab: Lab) -> None:
    path = lab.root / "m1" / SIDECAR_NAME
    path.parent.mkdir()
    path.write_bytes(b'[subject]\ndescription = "caf\xe9"\n')
    exc = problem(lab, lab.session_dir())
    assert exc.message == "m1/rig2nwb.toml: line 2: not UTF-8 text (byte 0xe9); save it as UTF-8"
    path.write_bytes(b'\xef\xbb\xbf[subject]\ndescription = "caf\xc3\xa9"\n')  # BOM + UTF-8
    assert load_metadata(lab.config(), lab.session_dir()).subject.description == "café"


def test_unreadable_sidecar(make_lab: Callable[..., Lab]) -> None:
    """Tests run as root, which reads anything: the load runs as nobody in a child process."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv not available")
    base = Path(tempfile.mkdtemp(prefix="rig2nwb-perm-"))  # pytest's tmp is root-only (0700)
    try:
        base.chmod(0o755)
        lab = Lab(base / "lab")
        for d in (lab.base, lab.root):
            d.chmod(0o755)
        lab.config_path.chmod(0o644)
        folder = lab.session_dir()
        folder.mkdir(parents=True)
        for d in (lab.root / "m1", lab.root / "m1" / "tif", folder.parent, folder):
            d.chmod(0o755)
        path = sidecar(lab.root / "m1", '[subject]\nsex = "F"\n')
        path.chmod(0o000)
        code = textwrap.dedent(f"""
            from pathlib import Path
            from rig2nwb.config.loading import load_config
            from rig2nwb.rig.sidecars import load_metadata
            from rig2nwb.errors import MetadataProblem
            try:
                load_metadata(load_config({str(lab.config_path)!r}, check_paths=False),
                              Path({str(folder)!r}))
            except MetadataProblem as exc:
                print(exc.message)
            """)
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
             code], capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYTHONPATH": str(REPO / "daemon")}, cwd="/")
        assert proc.stdout.strip() == "m1/rig2nwb.toml: cannot be read: Permission denied", proc.stderr
    finally:
        shutil.rmtree(base)


# -- DANDI checks --------------------------------------------------------------------------------


def meta_with(lab_factory: Callable[..., Lab], **subject: Any) -> SessionMetadata:
    session = subject.pop("session", {})
    return config_metadata(lab_factory(subject={**GOOD_SUBJECT, **subject}, session=session).config())


def test_complete_metadata_has_no_problems(make_lab: Callable[..., Lab]) -> None:
    meta = meta_with(make_lab)
    assert dandi_problems(meta, "mouse01", "Europe/Berlin") == []
    assert dandi_problems(meta_with(make_lab, sex="U"), "mouse01", "UTC") == []  # U is allowed


@pytest.mark.parametrize("age", ["P90D", "P12W", "P3M", "P1Y2M", "P1Y", "P1.5Y", "PT36H",
                                 "P2DT12H", "P90D/P120D", "P90D/", "P12W/P20W"])
def test_valid_ages(make_lab: Callable[..., Lab], age: str) -> None:
    assert dandi_problems(meta_with(make_lab, age=age), "m", "UTC") == []


@pytest.mark.parametrize("age", ["90 days", "90D", "p90d", "P", "PT", "P1DT", "P-3D", "P3D2M",
                                 "/P90D", "P90D/later", "P120D/P90D", "P 90D", "3 months"])
def test_invalid_ages(make_lab: Callable[..., Lab], age: str) -> None:
    problems = dandi_problems(meta_with(make_lab, age=age), "m", "UTC")
    assert len(problems) == 1
    assert problems[0].startswith(f"subject.age: {age!r}")
    assert problems[0].endswith("(set in config.toml)")


def test_age_or_date_of_birth_required(make_lab: Callable[..., Lab]) -> None:
    problems = dandi_problems(meta_with(make_lab, age=""), "m", "UTC")
    assert len(problems) == 1 and problems[0].startswith("subject.age: missing")
    assert dandi_problems(meta_with(make_lab, age="", date_of_birth="2024-01-05"), "m", "UTC") == []
    future = (datetime.date.today() + datetime.timedelta(days=30)).isoformat()
    problems = dandi_problems(meta_with(make_lab, age="", date_of_birth=future), "m", "UTC")
    assert problems == [f"subject.date_of_birth: {future} is in the future (set in config.toml)"]


@pytest.mark.parametrize(("species", "ok"), [
    ("Mus musculus", True), ("Rattus norvegicus", True), ("Mus musculus domesticus", True),
    ("http://purl.obolibrary.org/obo/NCBITaxon_10090", True),
    ("mouse", False), ("mus musculus", False), ("Mus", False), ("MUS MUSCULUS", False),
    ("NCBITaxon_10090", False), ("http://purl.obolibrary.org/obo/NCBITaxon_mouse", False),
])
def test_species_forms(make_lab: Callable[..., Lab], species: str, ok: bool) -> None:
    problems = dandi_problems(meta_with(make_lab, species=species), "m", "UTC")
    if ok:
        assert problems == []
    else:
        assert len(problems) == 1
        assert problems[0].startswith(f"subject.species: {species!r} is neither a Latin binomial")


def test_missing_species_subject_description_and_bad_timezone(make_lab: Callable[..., Lab]) -> None:
    meta = meta_with(make_lab, species="", session={"description": " "})
    problems = dandi_problems(meta, "", "Mars/Olympus")
    assert [p.split(":")[0] for p in problems] == [
        "subject id", "subject.species", "session.timezone", "session.description"]
    assert "unknown time zone 'Mars/Olympus'" in problems[2]


def test_problem_says_which_sidecar_set_the_value(lab: Lab) -> None:
    sidecar(lab.root / "m1", '[subject]\nage = "3 months"\n')
    meta = load_metadata(lab.config(), lab.session_dir())
    assert dandi_problems(meta, "m1", "UTC") == [
        "subject.age: '3 months' is not an ISO 8601 duration (e.g. P90D, P12W, P3M, P1Y2M, "
        "a range P90D/P120D or an open range P90D/) (set in m1/rig2nwb.toml)"]


def test_advice_is_separate(make_lab: Callable[..., Lab]) -> None:
    meta = meta_with(make_lab, session={"experimenter": ["Doe, Jane", "Rick Roe"],
                                        "related_publications": ["doi:10.1/x", "my thesis"]})
    assert dandi_problems(meta, "m", "UTC") == []
    advice = dandi_advice(meta)
    assert len(advice) == 2
    assert advice[0].startswith("session.experimenter: 'Rick Roe' is not in the form 'Last, First'")
    assert advice[1].startswith("session.related_publications: 'my thesis' is not a DOI")
    assert dandi_advice(meta_with(make_lab))[0].startswith("session.experimenter: nobody listed")


# -- check-config --------------------------------------------------------------------------------


def check_config(lab: Lab, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["check-config", "--config", str(lab.config_path)])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_check_config_complete(make_lab: Callable[..., Lab], capsys: pytest.CaptureFixture[str]) -> None:
    lab = make_lab(subject=GOOD_SUBJECT, session={"experimenter": ["Doe, Jane"]})
    sidecar(lab.root / "m1", '[subject]\nsex = "M"\n')
    code, out = check_config(lab, capsys)
    assert code == 0, out
    assert "OK" in out
    assert "config.toml defaults (subject id from the {subject} folder names): complete" in out
    assert "1 rig2nwb.toml file(s)" in out and "1 complete, 0 with problems" in out
    assert "complete: every field DANDI requires will be present" in out
    assert "advice" not in out


def test_check_config_missing_age_exits_1(make_lab: Callable[..., Lab],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    lab = make_lab(session={"experimenter": ["Jane Doe"]}, subject={"age": ""})  # no age anywhere
    code, out = check_config(lab, capsys)
    assert code == 1, out
    assert "subject.age: missing" in out
    assert "1 problem(s)" in out
    assert "no rig2nwb.toml files under" in out
    assert "'Jane Doe' is not in the form 'Last, First'" in out  # advice, not counted
    # A sidecar that provides the age makes that chain complete; the defaults still lack it.
    sidecar(lab.root / "m1", '[subject]\nage = "P90D"\n')
    code, out = check_config(lab, capsys)
    assert code == 1 and "1 complete, 0 with problems" in out


def test_check_config_invalid_sidecars(make_lab: Callable[..., Lab],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    lab = make_lab(subject=GOOD_SUBJECT)
    sidecar(lab.root / "m1", '[subject]\nsex = "male"\n')
    sidecar(lab.session_dir("s1", "m1"), '[subject]\nage = "P1D"\n')  # under the invalid one
    sidecar(lab.root / "m2", '[subject]\nage = "ninety days"\n')
    sidecar(lab.root / "m3" / "tif", '[session]\ntimezone = "UTC"\n')
    code, out = check_config(lab, capsys)
    assert code == 1, out
    assert "m1/rig2nwb.toml is invalid:" in out
    assert "subject.sex: Input should be 'M', 'F', 'U' or 'O' (got 'male')" in out
    assert "m1/tif/site1/s1/rig2nwb.toml" not in out  # its outer file is already reported
    assert "m2/rig2nwb.toml:\n    - subject.age: 'ninety days' is not an ISO 8601 duration" in out
    assert "m3/tif/rig2nwb.toml is invalid:\n    - session.timezone cannot be set" in out
    assert "4 rig2nwb.toml file(s)" in out and "1 complete, 3 with problems" in out
    assert "3 problem(s)" in out


def test_check_config_exit_codes_from_the_command_line(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(subject=GOOD_SUBJECT)
    assert lab.run_cli("check-config", timeout=60).returncode == 0
    sidecar(lab.root / "m1", "[subject\n")
    proc = lab.run_cli("check-config", timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "m1/rig2nwb.toml is invalid:\n    - line 1: not valid TOML" in proc.stdout
    assert "Traceback" not in proc.stderr
    proc = make_lab(subject={"sex": "male"}).run_cli("check-config", timeout=60)
    assert proc.returncode == 2  # the config itself is invalid
    assert "subject.sex: Input should be 'M', 'F', 'U' or 'O' (got 'male')" in proc.stderr
    assert "DANDI readiness" not in proc.stdout


def test_check_config_with_fixed_subject(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lab = Lab(tmp_path, rig={"frames": "{session}/*.tif", "subject": "mouse7", "scan_file": "",
                             "trial_file": ""}, subject=GOOD_SUBJECT)
    code, out = check_config(lab, capsys)
    assert code == 0, out
    assert "subject id 'mouse7' from rig.subject" in out


def test_shipped_config_is_dandi_complete(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path = tmp_path / "config.toml"
    cfg_path.write_text((REPO / "config.toml").read_text())
    for sub in ("demo-run/rig", "demo-run/nwb"):
        (tmp_path / sub).mkdir(parents=True)
    code = main(["check-config", str(cfg_path)])
    out = capsys.readouterr().out
    assert code == 0, out
