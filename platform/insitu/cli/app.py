"""The command group and its one error handler: a clear line and an exit code, no traceback."""

from __future__ import annotations

import os
import sys
from typing import Any

import pydantic
import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from insitu.cli import output
from insitu.client import Client
from insitu.errors import InsituError

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    """Print ``error: message`` and return the exit to raise."""
    output.error_line(message)
    return typer.Exit(code)


def _config_message(error: pydantic.ValidationError) -> str:
    problems = []
    for item in error.errors():
        variable = "INSITU_" + "__".join(str(p) for p in item["loc"]).upper()
        problems.append(f"{variable}: {item['msg'].removeprefix('Value error, ')}")
    return "invalid configuration in the environment: " + "; ".join(problems)


class InsituGroup(TyperGroup):
    """Runs a command and turns every error a user can meet into ``error: ...`` and exit 1."""

    def invoke(self, ctx: Any) -> Any:  # typer's own click Context; its module is private
        try:
            return super().invoke(ctx)
        except (TyperException, typer.Exit):
            raise  # usage errors (exit 2) and deliberate exits
        except InsituError as exc:
            raise fail(exc.message) from None
        except (KeyboardInterrupt, typer.Abort):
            output.stderr().print()
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except pydantic.ValidationError as exc:
            raise fail(_config_message(exc)) from None
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            raise fail(f"{exc.strerror or exc}{where}") from None
        except Exception as exc:
            if os.environ.get("INSITU_DEBUG"):
                raise
            raise fail(
                f"unexpected {type(exc).__name__}: {exc} (this is a bug in insitu; "
                "rerun with INSITU_DEBUG=1 to see where, and report it)"
            ) from None


def interactive() -> bool:
    """Whether a person can answer a question (stdin is a terminal)."""
    return sys.stdin.isatty()


def confirm(question: str, yes: bool, refused: str = "nothing changed") -> None:
    """Ask before a destructive step when a person is at the terminal; exit 1 on 'no'."""
    if yes or not interactive():
        return
    if not typer.confirm(question, default=False, err=True):
        output.stderr().print(refused)
        raise typer.Exit(EXIT_FAILED)


def connect() -> Client:
    """A client of the server named by INSITU_URL, with INSITU_TOKEN or the local admin token."""
    return Client()
