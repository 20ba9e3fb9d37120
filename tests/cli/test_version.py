"""`qchan --version` and `python -m qchan --version`: `qchan <version>` from the installed
package's metadata, or `qchan.__version__` where there is none."""

from __future__ import annotations

import pathlib
import subprocess
import sys
from importlib import metadata

import pytest

import qchan
from qchan.cli import main, version

QCHAN_SCRIPT = pathlib.Path(sys.executable).with_name("qchan")


@pytest.mark.parametrize(
    "argv", [[sys.executable, "-m", "qchan", "--version"], [str(QCHAN_SCRIPT), "--version"]]
)
def test_the_command_prints_the_installed_version(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        f"qchan {metadata.version('qchan')}\n",
        "",
    )


def test_the_metadata_and_the_module_agree() -> None:
    """setup.cfg's version and `qchan.__version__` are kept in step."""
    assert metadata.version("qchan") == qchan.__version__


def test_without_metadata_the_module_version_is_used(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    monkeypatch.setattr(qchan, "__version__", "9.9.9-tree")
    assert version() == "9.9.9-tree"
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == "qchan 9.9.9-tree\n"
