"""Entry point of `graft`: builds the typer app from the command modules and turns
GraftError (a user mistake) into one line on stderr and exit status 2."""
from __future__ import annotations

import importlib
import sys

import typer

from ..errors import GraftError

# Each module defines register(app: typer.Typer) and adds its commands.
COMMAND_MODULES = ("inspect_cmd", "transplant_cmd", "convert_cmd", "data_cmd", "advise_cmd", "train_cmd",
                   "serve_cmd", "report_cmd", "demo_cmd")


def make_app() -> typer.Typer:
    app = typer.Typer(name="graft", no_args_is_help=True, add_completion=False,
                      pretty_exceptions_enable=False, rich_markup_mode=None,
                      help="graftkit: bring a pretrained network into PyTorch, graft it onto your "
                           "network, prepare your images and fine-tune.")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").register(app)

    @app.command()
    def version() -> None:
        """Print graftkit's version."""
        from .. import __version__
        print(__version__)

    return app


def main(argv: list[str] | None = None) -> None:
    try:
        make_app()(args=argv, prog_name="graft")
    except GraftError as e:
        print(f"graft: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("graft: interrupted", file=sys.stderr)
        sys.exit(130)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        # Safety net: an OS error about a user path is a user mistake, not a crash.
        print(f"graft: error: {e.filename}: {e.strerror}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
