"""The plugin as a user meets it: a test module with no conftest, run by pytest, that takes
qchan's fixtures and helpers from the installed package alone (the pytest11 entry point)."""

from __future__ import annotations

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
USER_TESTS = """
import attrs
import pytest
import qchan
from qchan.pytest_plugin import dead_letters, drain, enqueue_all, run_until_settled


@attrs.frozen
class Order:
    id: str
    amount: float


class Declined(Exception):
    pass


def test_send_and_drain(qchan_queue):
    assert enqueue_all(qchan_queue, [Order("1", 9.5), Order("2", 1.0)]) == []
    assert drain(qchan_queue, Order, 2) == [Order("1", 9.5), Order("2", 1.0)]


def test_a_handler_that_fails_twice_then_succeeds(qchan_queue):
    calls = []

    def handle(order):
        calls.append(order.id)
        if len(calls) < 3:
            raise ConnectionError("payment service down")

    enqueue_all(qchan_queue, [Order("1", 9.5)])
    result = run_until_settled(handle, Order, qchan_queue, max_deliveries=5)
    assert (result.handled, result.failed, calls) == (1, 2, ["1", "1", "1"])
    assert result.dead_letters == []


def test_a_handler_that_gives_up(qchan_queue):
    def handle(order):
        raise Declined(order.id)

    enqueue_all(qchan_queue, [Order("7", 3.0)])
    result = run_until_settled(handle, Order, qchan_queue, give_up_on=Declined)
    assert result.dead_letters == [Order("7", 3.0)]
    assert dead_letters(qchan_queue, Order) == [Order("7", 3.0)]


def test_each_test_has_its_own_queue(qchan_queue, qchan_queue_factory):
    other = qchan_queue_factory()
    assert other.url != qchan_queue.url
    enqueue_all(other, [Order("x", 1.0)])
    with pytest.raises(AssertionError, match="0 of 1"):
        drain(qchan_queue, Order, 1, timeout=0.2)
"""


def test_a_users_module_passes_with_the_plugin_alone(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_orders=USER_TESTS)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)


def test_a_failing_user_test_fails(pytester: pytest.Pytester) -> None:
    """The helpers fail a test that expects what did not happen (they are no rubber stamp)."""
    pytester.makepyfile(
        test_wrong="""
        import attrs
        from qchan.pytest_plugin import drain, enqueue_all, run_until_settled

        @attrs.frozen
        class Order:
            id: str

        def test_expects_two(qchan_queue):
            enqueue_all(qchan_queue, [Order("1")])
            drain(qchan_queue, Order, 2, timeout=0.3)

        def test_never_settles(qchan_queue):
            enqueue_all(qchan_queue, [Order("1")])
            def handle(order):
                raise ValueError("always")
            run_until_settled(handle, Order, qchan_queue, max_deliveries=None, timeout=0.5)
        """
    )
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*drain: 1 of 2 'Order' message(s) arrived on mem://qchan-test-* within 0.3 s*",
            "*run_until_settled: mem://qchan-test-* not settled within 0.5 s*",
        ]
    )


def test_the_fixture_names_do_not_clash_with_a_users_own(pytester: pytest.Pytester) -> None:
    """A user's `queue` or `queues` fixture (this project has one) stays theirs."""
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture
        def queues():
            return "mine"
        """
    )
    pytester.makepyfile(
        test_mine="""
        def test_mine(queues, qchan_queue):
            assert queues == "mine"
            assert qchan_queue.url.startswith("mem://qchan-test-")
        """
    )
    pytester.runpytest("-q", "-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_the_readmes_example_passes(pytester: pytest.Pytester) -> None:
    """The README's testing example is a user's test module: it must pass as written."""
    section = README.read_text().split("### Testing your own handlers", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    pytester.makepyfile(test_readme_example=match.group(1))
    pytester.runpytest("-q", "-p", "no:cacheprovider").assert_outcomes(passed=3)
