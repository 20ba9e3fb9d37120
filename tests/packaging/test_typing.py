"""A user's own mypy, in the venv `make test` builds, sees qchan's types: the install is
an editable one in setuptools' strict mode (a link tree), which static tools follow."""

from __future__ import annotations

import pathlib
import subprocess
import sys

USER_CODE = """
import attrs
from qchan import connect, dequeue, enqueue, Msg

@attrs.frozen
class Order:
    id: str
    amount: float

def handle(order: Order) -> None: ...

def main() -> None:
    with connect("mem://orders") as q:
        with enqueue(Order, q) as (out, dlq):
            out.send(Order(id="1", amount=9.5))
        with dequeue(Order, q) as (rcv, ack):
            for msg in rcv:
                reveal_type(msg)
                reveal_type(msg.object)
                handle(msg.object)
                ack.send(msg)
"""

MISTAKE = """
from qchan import connect, enqueue

def main() -> None:
    with connect("mem://orders") as q, enqueue(int, q) as (out, _):
        out.send("not an int")
"""


def _mypy(tmp_path: pathlib.Path, code: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "user.py").write_text(code)
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "user.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_mypy_on_a_user_module_resolves_every_qchan_type(tmp_path: pathlib.Path) -> None:
    run = _mypy(tmp_path, USER_CODE)
    assert run.returncode == 0, run.stdout + run.stderr
    assert 'Revealed type is "qchan.message.Msg[user.Order]"' in run.stdout, run.stdout
    assert 'Revealed type is "user.Order"' in run.stdout, run.stdout


def test_mypy_on_a_user_module_catches_a_wrong_type(tmp_path: pathlib.Path) -> None:
    run = _mypy(tmp_path, MISTAKE)
    assert run.returncode == 1, run.stdout + run.stderr
    assert 'incompatible type "str"; expected "int"' in run.stdout, run.stdout
