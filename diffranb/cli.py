"""The ``diffranb`` command line."""

from __future__ import annotations

import argparse
import json
import shlex
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

    options = {k: v for k, v in (("rate_hz", args.rate), ("seconds", args.seconds)) if v is not None}
    if options and args.what != "follow":
        raise ValueError(f"bench {args.what}: --rate and --seconds are for bench follow only")
    result = bench.run(args.what, repeats=args.repeats, workers=args.workers, model=args.model, data=args.data,
                       batch=args.batch, follow_options=options)
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
    p.add_argument("what", choices=["sim", "dataset", "classic", "deepfreak", "stacked", "malloc", "read", "follow"],
                   help="what to benchmark")
    p.add_argument("--repeats", type=int, help="images per measurement (default 128 for classic, deepfreak and "
                                               "stacked, else 40); bench read: batches read")
    p.add_argument("--batch", type=int, help="classic, deepfreak --model, stacked: frames handed to the model per "
                                             "call, on one core and on each process; read: frames per batch "
                                             "(default 32)")
    p.add_argument("--workers", type=int, default=2, help="processes for the multi-core figure (default 2)")
    p.add_argument("--json", action="store_true", help="also print the figures as JSON")
    p.add_argument("--model", help="a saved model directory to time (bench classic: default fit the best pipeline; "
                                   "bench deepfreak: default the paper's topology with random weights, unbinned; "
                                   "bench stacked and follow: required)")
    p.add_argument("--data", help="bench deepfreak: also time training on this set's frames, read from the file "
                                  "every epoch and kept in memory (deepfreak.BinnedFrames); bench read: the set to "
                                  "read (default: 120 frames of 512² built here); bench follow: the set whose test "
                                  "frames the detector writes")
    p.add_argument("--rate", type=float, help="bench follow: frames per second the simulated detector writes "
                                              "(default 130)")
    p.add_argument("--seconds", type=float, help="bench follow: how long it writes (default 30)")
    p.set_defaults(func=_bench)
    _add_dataset_commands(sub)
    _add_classic_commands(sub)
    _add_deepfreak_commands()
    _add_stack_commands()
    return parser


# ---------------------------------------------------------------------------------------------------------
# Data set commands (diffranb.dataset): generate, export
# ---------------------------------------------------------------------------------------------------------

def _add_dataset_commands(sub) -> None:
    p = sub.add_parser("generate", help="build the DiffraNet-scale data set into an HDF5 file")
    p.add_argument("--n", type=int, required=True, help="number of images (DiffraNet: 25000)")
    p.add_argument("--seed", type=int, default=0, help="seed of every draw (default 0)")
    p.add_argument("--out", required=True, help="HDF5 file to write, e.g. data/diffranet.h5")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=2,
                       help="processes of a local Dask cluster (default 2; 0: no cluster, this process only)")
    where.add_argument("--scheduler", help="address of an existing Dask scheduler, e.g. tcp://host:8786")
    p.add_argument("--pixels", type=int, default=512, help="detector edge in pixels (default 512)")
    p.add_argument("--ice", action="store_true", help="add the sixth class: ice rings")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_generate)

    p = sub.add_parser("export", help="write a data set as 8-bit PNGs in DiffraNet's split/class/ layout")
    p.add_argument("--data", default="data/diffranet.h5", help="the data set (default data/diffranet.h5)")
    p.add_argument("--png", required=True, help="directory to create (must be empty or absent)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_export)


def _generate(args) -> int:
    from . import dataset

    classes = dataset.CLASSES + ((dataset.ICE,) if args.ice else ())
    out = dataset.build(args.n, args.seed, args.out, classes=classes, pixels=args.pixels,
                        workers=0 if args.scheduler else args.workers, scheduler=args.scheduler,
                        progress=not args.no_progress)
    with dataset.open_dataset(out) as ds:
        info = dataset.summary(ds)
        print(f"{out}: {info['n_images']} images of {ds.images.shape[1]}×{ds.images.shape[2]}, "
              + ", ".join(f"{k} {v}" for k, v in info["splits"].items()))
        print("shares: " + ", ".join(f"{c} {100 * s:.1f} %" for c, s in info["shares"].items()))
        print(f"content sha256 {ds.content_sha256}")
    return 0


def _export(args) -> int:
    from . import dataset

    n = dataset.export_png(args.data, args.png, progress=not args.no_progress)
    print(f"wrote {n} PNGs under {args.png}")
    return 0


# ---------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------
# Classic classifiers (diffranb.features, classic, tune, evaluate): train, tune, evaluate
# ---------------------------------------------------------------------------------------------------------

#: The sub-commands of ``diffranb train``: one per model kind (DeepFreak adds its own).
TRAIN_KINDS = {}


def _ints(text):
    return tuple(int(x) for x in text.split(",") if x.strip())


def _windows(text):
    """Spot backgrounds, e.g. "5,9" or "5,5x2": whole numbers are windows in pixels, "5x2" an iterated median."""
    from . import features

    windows = tuple(int(x) if x.strip().isdigit() else x.strip().lower() for x in text.split(",") if x.strip())
    try:
        features.spot_windows(windows)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: spot backgrounds are a comma-separated set of "
                                         f"{', '.join(map(str, features.SPOT_WINDOWS))}") from None
    return windows


def _names(text):
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _add_classic_commands(sub) -> None:
    from . import classic, dataset, features, tune

    train = sub.add_parser("train", help="fit a classifier on a data set's training split and save it")
    kinds = train.add_subparsers(dest="kind", required=True)
    TRAIN_KINDS["kinds"] = kinds
    p = kinds.add_parser("classic", help="feature extractor + random forest or RBF SVM")
    p.add_argument("--data", required=True, help="the data set, e.g. data/diffranet.h5")
    p.add_argument("--out", required=True, help="model directory to write (model.json, pipeline.skops)")
    p.add_argument("--trials", help="take the configuration of the best trial in this Hyperopt trials file")
    p.add_argument("--label", help="with --trials: best trial of this pipeline only, e.g. RF+GLCM")
    p.add_argument("--config", help="take the configuration from this JSON file (ClassicConfig fields)")
    d = classic.ClassicConfig()
    p.add_argument("--extractor", choices=features.KINDS, default=d.extractor)
    p.add_argument("--distances", type=_ints, default=d.distances, help="GLCM distances, e.g. 1,2,4 (px)")
    p.add_argument("--angles", type=_ints, default=d.angles, help="GLCM angles, e.g. 0,45 (degrees)")
    p.add_argument("--points", type=int, default=d.points, help="LBP samples P")
    p.add_argument("--radius", type=int, default=d.radius, help="LBP radius R (px)")
    p.add_argument("--words", type=int, default=d.words, help="SIFT vocabulary size")
    p.add_argument("--window", type=_windows, default=d.window,
                   help="spot statistics: median-background window (px), or several side by side, e.g. 5,9; "
                        "5x2 and 5x3 are the 5 × 5 median taken two and three times")
    p.add_argument("--classifier", choices=classic.CLASSIFIERS, default=d.classifier)
    p.add_argument("--C", type=float, default=d.C, help="SVM penalty")
    p.add_argument("--gamma", type=float, default=d.gamma, help="SVM RBF γ (standardised features)")
    p.add_argument("--n-estimators", type=int, default=d.n_estimators, help="random forest trees")
    p.add_argument("--max-features", default=d.max_features, help="'sqrt' or a share, e.g. 0.25")
    p.add_argument("--max-depth", type=int, default=d.max_depth, help="deepest level (default: unlimited)")
    p.add_argument("--class-weight", choices=tuple(classic.CLASS_WEIGHTS), default=d.class_weight)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--cache", help="feature cache directory (default: <data>.features)")
    p.add_argument("--workers", type=int, default=2, help="extraction processes and forest jobs (default 2)")
    p.set_defaults(func=_train_classic)

    tune_p = sub.add_parser("tune", help="hyperparameter search")
    searches = tune_p.add_subparsers(dest="search", required=True)
    TRAIN_KINDS["searches"] = searches  # DeepFreak adds `tune bohb`
    p = searches.add_parser("hyperopt", help="TPE over DiffraNet's joint space of extractors and classifiers")
    p.add_argument("--data", required=True, help="the data set, e.g. data/diffranet.h5")
    p.add_argument("--trials", type=int, default=150, help="trials in total, resumed ones included (default 150)")
    p.add_argument("--out", required=True, help="JSON trials file, written after every trial; resumed if present")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=tune.DEFAULT_TIMEOUT_S,
                   help=f"seconds one trial may take (default {tune.DEFAULT_TIMEOUT_S:.0f})")
    p.add_argument("--stop-after", type=int, help="evaluate at most this many new trials now")
    p.add_argument("--extractors", type=_names, default=features.PAPER_KINDS,
                   help="extractors to search, e.g. glcm,lbp,sift (the paper's, default) or spots "
                        f"(choose among {','.join(features.KINDS)})")
    p.add_argument("--windows", type=_windows,
                   help="with spots: the backgrounds the search may set side by side (default: a resumed "
                        f"search's own, else all of {','.join(map(str, features.SPOT_WINDOWS))})")
    p.add_argument("--report", help="then refit the best pipelines, test them and write metrics and figures here")
    p.add_argument("--models", help="with --report: save the refitted models under this directory")
    p.add_argument("--cache", help="feature cache directory (default: <data>.features)")
    p.add_argument("--workers", type=int, default=2, help="extraction processes and forest jobs (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress output")
    p.set_defaults(func=_tune_hyperopt)

    p = sub.add_parser("evaluate", help="test a saved model (classic, DeepFreak or stacked) on a split of a data set")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="model directory (with model.json)")
    which.add_argument("--paired", nargs=2, metavar=("A.json", "B.json"),
                       help="instead of testing, compare two records of --record on the same split frame by "
                            "frame: the frames only one got right, and McNemar's exact test")
    which.add_argument("--ideal-counter", nargs="?", const="count", metavar="METHOD",
                       choices=dataset.IDEAL_METHODS,
                       help="instead of a model, an integrator that is given whether there were X-rays and a "
                            "crystal, where every reflection falls and its background (dataset.IdealCounter): a "
                            "reference for the classifiers on the crystal frames. METHOD: count (default; counts "
                            "reflections measuring I/σ ≥ 3), calibrated (counts at several I/σ levels, class "
                            "learnt from them on the training split) or scale (an oracle also given each "
                            "reflection's expected strength up to the crystal's volume)")
    p.add_argument("--seed", type=int, default=0, help="with --ideal-counter: seed of its noise draws")
    p.add_argument("--data", required=True, help="a data set built by `diffranb generate`")
    p.add_argument("--split", choices=["train", "val", "test"],
                   help="the split to test (default test); with --paired, the split both records must hold")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--record", metavar="FILE", help="also write a record (JSON): this command, what was tested, "
                                                  "diffranb's version, the wall time, the metrics and every "
                                                  "frame's prediction")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (on standard error)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("sort", help="classify frames with a saved model and write each frame's class (CSV)")
    p.add_argument("--model", required=True, help="model directory (with model.json): classic, DeepFreak or stacked")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="frames: a set built by `diffranb generate`, another HDF5 file, a .npy array, PNG / TIFF "
                        "images (multi-page TIFFs too), or directories of images and HDF5 files (8-bit frames, or "
                        "16-bit raw frames in ADU)")
    p.add_argument("--out", required=True, help="CSV to write: file, frame, label, diffraction, p_<class>")
    p.add_argument("--dataset", help="HDF5 files other than diffranb sets: the dataset of frames (default: the "
                                     "file's only 2-D or 3-D array of 8-bit or 16-bit frames)")
    p.add_argument("--split", choices=["train", "val", "test"], help="diffranb sets: only this split (an HDF5 "
                                                                     "file that is not one is refused)")
    p.add_argument("--batch", type=int, default=32, help="frames per call of the model (default 32)")
    p.add_argument("--workers", type=int, default=1, help="processes of one thread each that read and classify "
                                                          "batches (default 1: this process, all its threads)")
    p.add_argument("--follow", action="store_true",
                   help="INPUT is one directory: sort the images, .npy and HDF5 files under it (its subdirectories "
                        "too) as they appear and as HDF5 files grow, appending rows to --out, until --idle-timeout "
                        "or Ctrl-C")
    p.add_argument("--idle-timeout", type=float, metavar="S",
                   help="with --follow: stop once nothing new has come and nothing was sorted for S seconds "
                        "(default: run until Ctrl-C)")
    p.add_argument("--poll", type=float, metavar="S",
                   help="with --follow: list the directory every S seconds, and take a file once its size and "
                        "time have held that long (default 0.5); an HDF5 file written in SWMR mode is read as it "
                        "grows, up to the frames it held a listing before")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (on standard error)")
    p.set_defaults(func=_sort)


def _follow(args) -> int:
    from . import evaluate, sort

    if len(args.inputs) != 1 or not Path(args.inputs[0]).is_dir():
        raise ValueError("--follow: give one directory to follow")
    if args.split:
        raise ValueError("--follow sorts the files of one directory as they come: no --split")
    model = evaluate.load_model(args.model)
    result = sort.follow(model, args.inputs[0], args.out, batch_size=args.batch,
                         poll_s=0.5 if args.poll is None else args.poll,
                         idle_timeout_s=args.idle_timeout, progress=not args.no_progress,
                         warn=lambda message: print(f"diffranb sort: {message}", file=sys.stderr),
                         workers=args.workers, model_dir=args.model, dataset=args.dataset)
    n = result["frames"]
    why = "no new file for the idle timeout" if result["stopped"] == "idle" else "interrupted"
    print(f"followed {args.inputs[0]} for {result['seconds']:.1f} s ({why}): sorted {n} frames of "
          f"{result['files']} files into {args.out}; skipped {len(result['skipped'])}")
    _print_shares(result)
    return 0


def _print_shares(result: dict) -> None:
    n = max(result["frames"], 1)
    for c, k in result["counts"].items():
        print(f"  {c:12s} {k:8d}  {100 * k / n:5.1f} %")
    print(f"  diffraction  {result['kept']:8d}  {100 * result['kept'] / n:5.1f} %  (frames to keep: all but blank "
          "and no-crystal)")


def _sort(args) -> int:
    from . import evaluate, sort

    if args.follow:
        return _follow(args)
    if args.idle_timeout is not None or args.poll is not None:
        raise ValueError("--idle-timeout and --poll are for --follow")
    paths = sort.expand_inputs(args.inputs)
    sources = [sort.open_source(p, dataset=args.dataset, split=args.split) for p in paths]
    model = evaluate.load_model(args.model)
    try:
        result = sort.write_csv(model, sources, args.out, batch_size=args.batch, progress=not args.no_progress,
                                workers=args.workers, model_dir=args.model)
    except KeyboardInterrupt:
        print(f"diffranb sort: interrupted; {args.out} was not written", file=sys.stderr)
        return 130
    print(f"sorted {result['frames']} frames of {len(sources)} file{'s' * (len(sources) != 1)} in "
          f"{result['seconds']:.1f} s ({result['frames_per_s']:.1f} frames/s) into {args.out}")
    _print_shares(result)
    return 0


def _train_classic(args) -> int:
    from . import classic, features, tune

    if args.trials:
        record = tune.load_trials(args.trials)
        best = tune.best_per_label(record).get(args.label) if args.label else tune.best_trial(record)
        if best is None:
            raise ValueError(f"{args.trials}: no successful trial{' of ' + args.label if args.label else ''}")
        config = classic.ClassicConfig.from_dict(best["config"])
    elif args.config:
        config = classic.ClassicConfig.from_dict(json.loads(Path(args.config).read_text()))
    else:
        max_features = args.max_features if args.max_features == "sqrt" else float(args.max_features)
        config = classic.ClassicConfig(
            extractor=args.extractor, distances=args.distances, angles=args.angles, points=args.points,
            radius=args.radius, words=args.words, window=args.window, classifier=args.classifier, C=args.C, gamma=args.gamma,
            n_estimators=args.n_estimators, max_features=max_features, max_depth=args.max_depth,
            class_weight=args.class_weight, seed=args.seed)
    store = features.FeatureStore(args.data, args.cache, workers=args.workers)
    model = classic.train(config, store, n_jobs=max(1, args.workers))
    out = classic.save_model(model, args.out)
    print(f"wrote {out}: {config.label()} {json.dumps(config.to_dict())}, fitted on "
          f"{model.info['n_train']} frames in {model.info['fit_seconds']:.1f} s")
    return 0


def _tune_hyperopt(args) -> int:
    import time

    from . import tune

    start = time.perf_counter()
    record = tune.run(args.data, args.out, n_trials=args.trials, seed=args.seed, cache_dir=args.cache,
                      timeout_s=args.timeout, workers=args.workers, progress=not args.no_progress,
                      stop_after=args.stop_after, extractors=args.extractors, windows=args.windows)
    best = record.get("best")
    print(f"{len(record['trials'])} trials in {args.out}: search {record['search_seconds']:.0f} s, "
          f"feature extraction {record['extract_seconds']:.0f} s")
    if best:
        print(f"best: {best['label']} val accuracy {1 - best['loss']:.4f} {json.dumps(best['config'])}")
    if args.report:
        command = args.command_line
        result = tune.report(args.out, args.data, args.report, models_dir=args.models, cache_dir=args.cache,
                             workers=args.workers, command=command)
        result["wall_seconds"] = time.perf_counter() - start
        (Path(args.report) / "metrics.json").write_text(json.dumps(result, indent=1))
        for name, m in result["methods"].items():
            print(f"{name:9s} {m['label']:9s} test accuracy {100 * m['test']['accuracy']:.2f} %, "
                  f"binary {100 * m['test']['binary_accuracy']:.2f} %")
    return 0


def _evaluate(args) -> int:
    import time

    from . import __version__, dataset, evaluate

    start = time.perf_counter()
    if args.paired:
        if args.record:
            raise ValueError("--record is for testing a model, not for --paired")
        with dataset.open_dataset(args.data) as ds:
            result = evaluate.paired(*args.paired, ds)
        if args.split and args.split != result["split"]:
            raise ValueError(f"--split {args.split}: the records tested the {result['split']} split")
        print(json.dumps(result, indent=2) if args.json else evaluate.format_paired(result))
        return 0
    if args.record and Path(args.record).exists():
        raise ValueError(f"--record {args.record!r} exists: refusing to overwrite it")
    if args.record and not Path(args.record).resolve().parent.is_dir():
        raise ValueError(f"--record {args.record!r}: its directory does not exist")
    args.split = args.split or "test"
    if args.ideal_counter == "calibrated" and args.split == "train":
        raise ValueError("--ideal-counter calibrated learns from the training split: test it on val or test")
    with dataset.open_dataset(args.data) as ds:
        progress = not args.no_progress
        model = dataset.IdealCounter.for_dataset(ds, args.seed, args.ideal_counter, progress=progress) \
            if args.ideal_counter else evaluate.load_model(args.model)
        result = evaluate.evaluate_model(model, ds, args.split, progress=progress,
                                         with_predictions=bool(args.record))
    predictions = result.pop("predictions", None)
    if args.record:
        what = (f"dataset.IdealCounter, method {args.ideal_counter}, noise seed {args.seed}"
                if args.ideal_counter else f"the {model.kind} model in {args.model}")
        if args.ideal_counter == "calibrated":
            import sklearn

            what += (f", fitted on the {model.n_fitted} crystal frames of the training split (scikit-learn "
                     f"{sklearn.__version__})")
        Path(args.record).write_text(json.dumps({
            "command": args.command_line, "what": what, "diffranb_version": __version__,
            "wall_seconds": time.perf_counter() - start, "metrics": result | {"predictions": predictions}},
            indent=1) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        name = model.config.label() if hasattr(model, "config") else \
            model.label() if callable(getattr(model, "label", None)) else getattr(model, "kind", "model")
        print(evaluate.format_report({name: result}))
    return 0


# ---------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------
# DeepFreak (diffranb.deepfreak, diffranb.bohb): train deepfreak, tune bohb, tune bohb-worker
# ---------------------------------------------------------------------------------------------------------

def _add_deepfreak_commands() -> None:
    from .deepfreak import BIN_MODES, FRAME_STORE_MIB, INPUTS, TOPOLOGIES, TrainConfig

    d = TrainConfig()
    p = TRAIN_KINDS["kinds"].add_parser("deepfreak", help="DeepFreak: a ResNet-50 on the frames (torch, CPU)")
    p.add_argument("--data", required=True, help="the data set, e.g. data/diffranet.h5")
    p.add_argument("--out", required=True, help="model directory (model.json, model.safetensors, checkpoint/)")
    p.add_argument("--bohb", help="take topology, learning rate, momentum, weight decay and batch size from the "
                                  "incumbent of this BOHB directory (its summary.json); flags below override")
    p.add_argument("--topology", type=int, help=f"index 0–{len(TOPOLOGIES) - 1} into deepfreak.TOPOLOGIES "
                                                f"(default {d.topology}, the paper's winner)")
    p.add_argument("--learning-rate", type=float, help=f"SGD base learning rate (default {d.learning_rate})")
    p.add_argument("--momentum", type=float, help=f"(default {d.momentum})")
    p.add_argument("--weight-decay", type=float, help=f"(default {d.weight_decay})")
    p.add_argument("--batch-size", type=int, help=f"frames (default {d.batch_size})")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"(default {d.epochs}; ÷10 learning rate every "
                                                                f"{d.lr_step})")
    p.add_argument("--binning", type=int, default=d.binning,
                   help=f"average b × b pixels before the network: 4 makes 512² frames 128², 16× faster "
                        f"(default {d.binning})")
    p.add_argument("--bin-mode", choices=BIN_MODES,
                   help="reduce each b × b block to its mean or its maximum (max keeps one-pixel Bragg spots at "
                        f"full height); default: the --bohb search's, else {d.bin_mode}")
    p.add_argument("--max-train", type=int, help="train on a stratified subset of this many frames")
    p.add_argument("--max-val", type=int, help="validate on a stratified subset of this many frames")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--flip", action="store_true", help="augment: mirror a seeded half of every training batch "
                                                       "left–right (not in the paper's recipe)")
    p.add_argument("--input", choices=INPUTS, default=d.input,
                   help="what the network is shown: the frame (the paper's) or its spot significance, a hit "
                        "finder's map with the detector mask learnt from the training split (default "
                        f"{d.input})")
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    p.add_argument("--frame-store", type=float, default=FRAME_STORE_MIB, metavar="MIB",
                   help="memory for the binned training and validation frames, read once and kept for later "
                        f"epochs; 0 reads every epoch from the file; same results either way (default "
                        f"{FRAME_STORE_MIB:g})")
    p.add_argument("--no-resume", action="store_true", help="discard the checkpoint in --out and start afresh")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--report", help="then test the model and write metrics.json, learning curves and the confusion "
                                    "matrix into this directory (e.g. results/deepfreak)")
    p.set_defaults(func=_train_deepfreak)

    searches = TRAIN_KINDS["searches"]
    p = searches.add_parser("bohb", help="BOHB (hpbandster) over DeepFreak's topologies and hyperparameters")
    p.add_argument("--data", required=True, help="the data set, e.g. data/diffranet.h5")
    p.add_argument("--out", required=True, help="search directory: hpbandster's log (resumed if present), "
                                                "summary.json")
    p.add_argument("--iterations", type=int, default=4, help="Hyperband iterations in all (default 4)")
    p.add_argument("--min-budget", type=float, default=1, help="epochs (default 1)")
    p.add_argument("--max-budget", type=float, default=9, help="epochs (default 9)")
    p.add_argument("--eta", type=float, default=3, help="successive halving factor (default 3)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    _bohb_objective_flags(p)
    p.add_argument("--topologies", help="search only these topologies, as indices 0–12 into deepfreak.TOPOLOGIES "
                                        "(the paper's numbers minus 1), e.g. 7,8,12 (default all 13)")
    p.add_argument("--timeout", type=float, help="stop the whole search after this many seconds")
    p.add_argument("--no-resume", action="store_true", help="move an existing log aside and start afresh")
    p.add_argument("--run-id", default="deepfreak", help="hpbandster run id (default deepfreak)")
    p.add_argument("--host", default="127.0.0.1",
                   help="nameserver address (default 127.0.0.1; an address other machines reach lets "
                        "`diffranb tune bohb-worker` join from there: trusted networks only, Pyro carries pickles)")
    p.add_argument("--port", type=int, default=0, help="nameserver port (default 0: a free one)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep every evaluation's checkpoint")
    p.set_defaults(func=_tune_bohb)

    p = searches.add_parser("bohb-worker", help="join a running `tune bohb` search from another machine")
    p.add_argument("--nameserver", required=True, help="HOST:PORT the search printed (and wrote to "
                                                       "<out>/nameserver.json)")
    p.add_argument("--run-id", default="deepfreak", help="the search's run id (default deepfreak)")
    p.add_argument("--host", required=True, help="this machine's address as the search's machine reaches it")
    p.add_argument("--data", required=True, help="the same data set, as this machine sees it")
    p.add_argument("--workdir", required=True, help="where this worker keeps its checkpoints")
    _bohb_objective_flags(p)
    p.set_defaults(func=_tune_bohb_worker)


def _bohb_objective_flags(p) -> None:
    from .deepfreak import BIN_MODES

    p.add_argument("--binning", type=int, default=4, help="input binning (default 4)")
    p.add_argument("--bin-mode", choices=BIN_MODES, default="mean",
                   help="reduce each block to its mean or its maximum, the same for every configuration "
                        "(default mean)")
    p.add_argument("--max-train", type=int, help="train each evaluation on a stratified subset of this many frames")
    p.add_argument("--max-val", type=int, help="validate on a stratified subset of this many frames")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch threads per worker (default: cores / workers)")


def _train_deepfreak(args) -> int:
    import dataclasses

    from . import deepfreak

    fields = {}
    if args.bohb:
        summary = json.loads((Path(args.bohb) / "summary.json").read_text())
        if not summary.get("incumbent"):
            raise ValueError(f"{args.bohb}: the search has no incumbent")
        fields.update(summary["incumbent"])
        # the incumbent was chosen on inputs binned this way (settings omit the mode when it is "mean")
        fields["bin_mode"] = (summary.get("settings") or {}).get("bin_mode", "mean")
    for name in ("topology", "learning_rate", "momentum", "weight_decay", "batch_size", "bin_mode"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    config = deepfreak.TrainConfig(**fields, epochs=args.epochs, binning=args.binning, seed=args.seed,
                                   max_train=args.max_train, max_val=args.max_val, flip=args.flip,
                                   input=args.input)
    result = deepfreak.train(args.data, args.out, config, resume=not args.no_resume,
                             progress=not args.no_progress, threads=args.threads,
                             frame_store_mib=args.frame_store)
    meta_path = Path(args.out) / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["command"] = args.command_line
    meta_path.write_text(json.dumps(meta, indent=1))
    last = result.history[-1]
    if args.report:
        record = deepfreak.report(args.out, args.data, args.report, bohb_dir=args.bohb, command=meta["command"])
        print(f"test accuracy {100 * record['test']['accuracy']:.2f} %, binary "
              f"{100 * record['test']['binary_accuracy']:.2f} %; record in {args.report}")
    print(f"wrote {args.out}: {json.dumps(dataclasses.asdict(config))}")
    print(f"best epoch {result.best_epoch}: val accuracy {result.best_val_accuracy:.4f}; last epoch "
          f"{last['epoch']}: train {last['train_images_per_s']:.1f} images/s, peak RSS {last['max_rss_mib']:.0f} MiB; "
          f"{result.seconds:.0f} s (resumed after {result.resumed_from} epochs)")
    return 0


def _tune_bohb(args) -> int:
    from . import tune

    space = {"topology": tuple(int(t) for t in args.topologies.split(","))} if args.topologies else None
    result = tune.run_bohb(args.data, args.out, n_iterations=args.iterations, min_budget=args.min_budget,
                           max_budget=args.max_budget, eta=args.eta, n_workers=args.workers, binning=args.binning,
                           bin_mode=args.bin_mode, max_train=args.max_train, max_val=args.max_val, seed=args.seed,
                           threads=args.threads, space=space, timeout=args.timeout, resume=not args.no_resume,
                           run_id=args.run_id, host=args.host, port=args.port, keep_checkpoints=args.keep_checkpoints,
                           command=args.command_line)
    print(f"{len(result.runs)} evaluations in {args.out}, {len(result.failures)} failed, "
          f"{result.seconds:.0f} s{f', stopped: {result.stopped}' if result.stopped else ''}")
    return 0 if result.incumbent is not None else 1


def _tune_bohb_worker(args) -> int:
    from . import bohb

    host, _, port = args.nameserver.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--nameserver {args.nameserver!r}: must be HOST:PORT")
    objective = bohb.DeepFreakObjective(str(Path(args.data).resolve()), str(Path(args.workdir).resolve()),
                                        binning=args.binning, bin_mode=args.bin_mode, max_train=args.max_train,
                                        max_val=args.max_val, seed=args.seed, threads=args.threads)
    bohb.run_worker(objective, nameserver=host, nameserver_port=int(port), run_id=args.run_id, host=args.host)
    return 0


# ---------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------
# Stacked models (diffranb.stack): train stacked
# ---------------------------------------------------------------------------------------------------------

def _add_stack_commands() -> None:
    p = TRAIN_KINDS["kinds"].add_parser("stacked", help="a logistic regression on the class probabilities of "
                                                        "several saved models")
    p.add_argument("--data", required=True, help="the data set, e.g. data/diffranet.h5")
    p.add_argument("--members", required=True, type=_names,
                   help="saved model directories, comma-separated (at least two, classic or DeepFreak)")
    p.add_argument("--out", required=True, help="model directory to write (model.json, combiner.skops)")
    p.add_argument("--split", choices=["train", "val", "test"], default="val",
                   help="frames the regression learns from (default val; not the members' training split)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_train_stacked)


def _train_stacked(args) -> int:
    from . import stack

    model = stack.fit(args.members, args.data, split=args.split, progress=not args.no_progress)
    out = stack.save_model(model, args.out)
    meta = json.loads((out / "model.json").read_text())
    (out / "model.json").write_text(json.dumps(meta | {"command": args.command_line}, indent=2))
    print(f"wrote {out}: {model.label()}, combiner fitted on the {model.info['n_fit']} frames of the "
          f"{model.info['fitted_on']} split")
    return 0


# ---------------------------------------------------------------------------------------------------------


def _version() -> str:
    from . import __version__

    return f"diffranb {__version__}"


def main(argv=None) -> int:
    """Entry point of the ``diffranb`` command."""
    args = build_parser().parse_args(argv)
    # What was asked for, as a shell line: results record it, whether called from a shell or from Python.
    args.command_line = shlex.join(["diffranb", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, json.JSONDecodeError) as exc:
        print(f"diffranb {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
