"""The `medsynth` command line.

Each subcommand lives in its own module of this package and exposes ``register(subparsers)``, which
adds its parser and sets ``func`` (``args -> int`` exit code). Exit codes: 0 done, 2 bad input
(`InputError`, argument errors), 1 any other failure. SIGTERM interrupts a command as Ctrl-C does, so
that its temporary files are removed on the way out (`medsynth train` stops with a checkpoint instead).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading

from medsynth.errors import InputError, MedsynthError

# Modules are imported lazily by name so `medsynth info` does not pay for torch.
SUBCOMMAND_MODULES = ("info", "train", "distill", "evaluate", "lesions", "reconstruct")

log = logging.getLogger("medsynth")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medsynth", description="Synthesize medical images with GANs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"medsynth.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad arguments, 0 on --help
        return int(exc.code or 0)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"medsynth: error: {exc}", file=sys.stderr)
        return 2
    except MedsynthError as exc:
        print(f"medsynth: failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("medsynth: interrupted", file=sys.stderr)
        return 1
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame) -> None:
    # The default action of SIGTERM ends the process at once, skipping the `finally` blocks that
    # remove temporary files (a half-streamed NIfTI, a staged DICOM folder).
    raise KeyboardInterrupt
