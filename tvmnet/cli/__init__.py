"""Command line: parses and validates arguments, calls the library, maps errors to exit codes.

No work happens here: each ``cmd_*`` builds a typed options object and calls a library
function that never sees an argparse Namespace.

``parser`` builds the argument parser, ``commands`` holds one function per verb; ``main``
maps errors to exit codes in one place.
"""

from __future__ import annotations

import logging

from tvmnet.core.errors import TvmnetError, err_line

log = logging.getLogger("tvmnet")


def main(argv=None) -> int:
    from tvmnet.cli.commands import err as _err
    from tvmnet.cli.parser import build_parser

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except TvmnetError as err:
        if args.verbose:
            import traceback

            traceback.print_exc()
        _err(str(err))
        return err.exit_code
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except Exception as err:  # an internal error: still one line unless --verbose
        if args.verbose:
            raise
        _err(f"internal error ({type(err).__name__}: {err_line(err)}); rerun with --verbose and report it")
        return 1
