"""What `qchan worker` runs: the handler a MODULE:FUNCTION path names, its message type
(from the annotation or --type), and the retry policy the options describe."""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
import typing
from collections.abc import Callable
from typing import Any

import attrs

__all__ = ["Target", "WorkerRuntimeError", "WorkerUsageError", "resolve", "retries"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class WorkerUsageError(Exception):
    """A mistake in the command line: exit 2 with this text."""


class WorkerRuntimeError(Exception):
    """The command was right, the world was not (a port in use, a broker away): exit 1."""


@attrs.frozen
class Target:
    """What a worker runs: the handler, its message type, and whether it takes the Msg."""

    handler: Callable[[Any], object]
    type_: type[Any]
    with_msg: bool


def _import(path: str, what: str) -> Any:
    """The object `MODULE:NAME` (NAME may be dotted) names; a usage error says why not."""
    module_name, colon, attr = path.partition(":")
    if not colon or not module_name or not attr:
        raise WorkerUsageError(f"{what} {path!r} is not MODULE:NAME (e.g. orders.tasks:handle)")
    # The current directory first, as `python -m` and uvicorn do: `qchan worker app:handle`
    # run from the project's folder finds app.py.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise WorkerUsageError(
                f"cannot import {what} {path!r}: no module named {e.name!r} "
                f"(run from the folder that holds it, or set PYTHONPATH)"
            ) from e
        raise WorkerUsageError(f"importing {module_name!r} failed: {e}") from e
    except Exception as e:
        raise WorkerUsageError(
            f"importing {module_name!r} raised {type(e).__name__}: {e} (-v shows the traceback)"
        ) from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise WorkerUsageError(f"module {module_name!r} has no {attr!r} ({what})") from None
    return obj


def _message_type(handler: Callable[..., object]) -> tuple[Any, bool] | None:
    """(type, with_msg) from the handler's first parameter's annotation, or None."""
    from ..message import Msg  # noqa: PLC0415 - loaded with the command, not the CLI

    try:
        params = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError):
        return None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if not params or params[0].kind not in positional:
        raise WorkerUsageError(
            f"handler {_name(handler)} takes no positional parameter: it must take the message"
        )
    try:
        hints = typing.get_type_hints(handler)
    except Exception as e:  # noqa: BLE001 - a forward reference that does not resolve, say
        raise WorkerUsageError(
            f"cannot read the annotations of {_name(handler)}: {type(e).__name__}: {e}; "
            f"give the type with --type MODULE:CLASS"
        ) from None
    hint = hints.get(params[0].name)
    if hint is None:
        return None
    if hint is Msg:
        return None, True
    if typing.get_origin(hint) is Msg:
        (inner,) = typing.get_args(hint)
        return inner, True
    return hint, False


def _name(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"


def resolve(handler_path: str, type_path: str | None) -> Target:
    """The handler, its message type (the annotation, or --type) and its calling style."""
    handler = _import(handler_path, "handler")
    if not callable(handler):
        kind = type(handler).__name__
        raise WorkerUsageError(f"handler {handler_path!r} is {kind}, not callable")
    if inspect.iscoroutinefunction(handler):
        raise WorkerUsageError(f"handler {handler_path!r} is async; serve runs plain functions")
    found = _message_type(handler)
    with_msg = found is not None and found[1]
    type_: Any = found[0] if found is not None else None
    if type_path is not None:
        type_ = _import(type_path, "--type")
    if type_ is None:
        raise WorkerUsageError(
            f"no message type for {handler_path!r}: annotate its first parameter "
            f"(def handle(order: Order), or msg: Msg[Order]) or give --type MODULE:CLASS"
        )
    if not isinstance(type_, type):
        raise WorkerUsageError(
            f"the message type of {handler_path!r} is {type_!r}, not a class; annotate it with "
            f"a class (attrs, dataclass, bytes, str) or give --type MODULE:CLASS"
        )
    return Target(handler, type_, with_msg)


def exception_classes(paths: list[str], option: str) -> tuple[type[BaseException], ...]:
    """The exception classes --give-up-on / --retry-on name."""
    found = []
    for path in paths:
        cls = _import(path, option) if ":" in path else _builtin_exception(path, option)
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise WorkerUsageError(f"{option} {path!r} is not an exception class")
        found.append(cls)
    return tuple(found)


def _builtin_exception(name: str, option: str) -> Any:
    import builtins  # noqa: PLC0415

    cls = getattr(builtins, name, None)
    if cls is None:
        raise WorkerUsageError(
            f"{option} {name!r}: not a builtin exception; name others as MODULE:CLASS"
        )
    return cls


def retries(args: argparse.Namespace) -> Any:
    """The handler retry policy the options describe (a `qchan.Retries`)."""
    from ..retry import Retries  # noqa: PLC0415

    changes: dict[str, Any] = {}
    if args.max_deliveries is not None:
        changes["max_deliveries"] = None if args.max_deliveries == 0 else args.max_deliveries
    if args.retry_delay is not None:
        changes["delay"] = args.retry_delay
    if args.retry_max_delay is not None:
        changes["max_delay"] = args.retry_max_delay
    if args.give_up_on:
        changes["give_up_on"] = exception_classes(args.give_up_on, "--give-up-on")
    if args.retry_on:
        changes["retry_on"] = exception_classes(args.retry_on, "--retry-on")
    try:
        return Retries(**changes)
    except (TypeError, ValueError) as e:
        raise WorkerUsageError(str(e)) from None
