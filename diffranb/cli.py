"""The ``diffranb`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _simulate(args) -> int:
    import numpy as np

    from . import io
    from .sim import scene as sc

    out = Path(args.out)
    if not out.parent.is_dir():
        raise SystemExit(f"diffranb simulate: --out {out}: directory {out.parent} does not exist")
    scene, mosaic_seed = io.load_case(args.params)
    if args.noiseless:
        image = sc.expected_photons(scene, mosaic_seed=mosaic_seed)
    else:
        from dataclasses import replace

        scene = replace(scene, response=io.default_response())
        image = sc.render(scene, seed=args.seed)
    io.save_npy(out, image)
    print(f"wrote {out}: {image.shape[0]}×{image.shape[1]} {image.dtype}, "
          f"{'photons' if image.dtype == np.float32 else 'ADU'}, max {float(image.max()):.4g}")
    return 0


def _bench(args) -> int:
    from . import bench

    result = bench.run(args.what, repeats=args.repeats, workers=args.workers)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``diffranb`` (exposed for the tests and the docs)."""
    parser = argparse.ArgumentParser(prog="diffranb", description=__doc__)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="render one image from a nanoBragg-style JSON case")
    p.add_argument("--params", required=True, help="case file (JSON, the fields of shared/reference/nanobragg)")
    p.add_argument("--out", required=True, help="output .npy: float32 photons, or uint16 ADU with noise")
    p.add_argument("--noiseless", action="store_true", help="expected photons, no detector model")
    p.add_argument("--seed", type=int, default=0, help="seed of the detector noise (default 0)")
    p.set_defaults(func=_simulate)

    p = sub.add_parser("bench", help="print speed figures")
    p.add_argument("what", choices=["sim"], help="what to benchmark")
    p.add_argument("--repeats", type=int, default=40, help="images per measurement (default 40)")
    p.add_argument("--workers", type=int, default=2, help="processes for the multi-core figure (default 2)")
    p.add_argument("--json", action="store_true", help="also print the figures as JSON")
    p.set_defaults(func=_bench)
    return parser


def _version() -> str:
    from . import __version__

    return f"diffranb {__version__}"


def main(argv=None) -> int:
    """Entry point of the ``diffranb`` command."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, json.JSONDecodeError) as exc:
        print(f"diffranb {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
