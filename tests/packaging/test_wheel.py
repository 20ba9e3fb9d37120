"""The wheel holds every module of both folders, under the names they import as, and
the marker that tells type checkers qchan ships its types."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _expected() -> set[str]:
    names = {"qchan/py.typed"}
    for folder, package in (("channels", "qchan"), ("adapters", "qchan/adapters")):
        for path in (ROOT / folder).rglob("*.py"):
            if "__pycache__" not in path.parts:
                names.add(f"{package}/{path.relative_to(ROOT / folder).as_posix()}")
    return names


def test_the_wheel_holds_every_module(tmp_path: pathlib.Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("qchan-*.whl")
    with zipfile.ZipFile(wheel) as z:
        inside = {n for n in z.namelist() if not n.startswith("qchan-")}
    expected = _expected()
    assert len(expected) > 45
    assert expected - inside == set(), "modules missing from the wheel"
    assert {n for n in inside if n.endswith(".py")} - expected == set(), "unexpected modules"
    assert not any(n.startswith(("channels/", "adapters/", "tests/")) for n in inside)
