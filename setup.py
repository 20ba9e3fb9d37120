"""Build shim: metadata lives in setup.cfg; the package list is found here.

setup.cfg maps the folders (`channels/` installs as `qchan`, `adapters/` as
`qchan.adapters`); this file lists every package below them, so a new subpackage
is in the wheel without an edit (tests/packaging/test_wheel.py checks it).
"""

from setuptools import find_packages, setup


def _packages(folder: str, name: str) -> list[str]:
    return [name, *(f"{name}.{sub}" for sub in find_packages(folder))]


setup(packages=[*_packages("channels", "qchan"), *_packages("adapters", "qchan.adapters")])
