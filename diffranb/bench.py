"""Speed benchmarks behind ``diffranb bench``: they print figures, and ratios against a baseline measured in
the same run (the machine may be shared and noisy, so absolute numbers alone mean little)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numba
import numpy as np

from .threads import limited, set_threads

#: nanoBragg's time for one 512² image at 30 mosaic domains plus background and noise, on the project's
#: 2-core machines (measured outside this package): the target is ≥ 30× faster at matched physics.
NANOBRAGG_SECONDS_PER_IMAGE = 0.85


def _v1_scene():
    from .sim.crystal import Crystal
    from .sim.geometry import Beam, Detector
    from .sim.scene import Scene

    return Scene(detector=Detector(distance_mm=150.0, beam_center_px=(256.0, 256.0)), beam=Beam(wavelength_A=1.0),
                 crystal=Crystal(cell=(79.1, 79.1, 37.9, 90, 90, 90), cells_abc=(10, 10, 10), misset_deg=(10, 20, 30)),
                 model="exact")


def _render_realistic(seed: int):
    from .sim.scene import example_scene, render

    return render(example_scene(seed), seed=seed)


def _init_worker():
    numba.set_num_threads(1)
    _render_realistic(10**6)  # load the compiled kernels before the clock starts


def _cold_compile_seconds() -> float:
    """Seconds to import and render the first frame with an empty numba cache (a fresh install)."""
    code = ("import time; t = time.perf_counter(); from diffranb.sim.scene import example_scene, render; "
            "render(example_scene(0)); print(time.perf_counter() - t)")
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def _rate(fn, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - t0)


def sim(repeats: int = 40, workers: int = 2) -> dict:
    """Images per second of the simulator.

    Figures: the first frame's time in a fresh process with an empty compile cache (``cold_compile_s``) and
    with the cache this install already has (``first_call_s``, beyond a warm frame); the nanoBragg v1 case with the exact model; the
    realistic DiffraNet-like frame (:func:`sim.scene.example_scene`: Wilson F, mosaic 0.3°, water + air,
    bandpass, divergence, full detector model) with the fast model on one core and on ``workers`` processes;
    and the baseline, that same frame with the exact (nanoBragg) model at 30 mosaic domains on all cores.
    """
    from .sim.scene import example_scene, render

    out = {"cores": os.cpu_count(), "numba_threads": numba.get_num_threads()}
    out["cold_compile_s"] = _cold_compile_seconds()
    t0 = time.perf_counter()
    render(example_scene(0), seed=0)
    out["first_call_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    render(example_scene(1), seed=1)
    out["first_call_s"] -= time.perf_counter() - t0

    v1 = _v1_scene()
    render(v1)
    out["v1_exact_images_per_s"] = _rate(lambda i: render(v1, seed=i), max(3, repeats // 8))

    numba.set_num_threads(1)
    out["realistic_fast_images_per_s_1core"] = _rate(_render_realistic, repeats)
    numba.set_num_threads(out["numba_threads"])
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
        list(pool.map(_render_realistic, range(workers)))  # every worker is up before timing
        t0 = time.perf_counter()
        list(pool.map(_render_realistic, range(repeats * workers)))
        out[f"realistic_fast_images_per_s_{workers}proc"] = repeats * workers / (time.perf_counter() - t0)

    def exact30(i):
        sc = example_scene(i)
        render(replace(sc, model="exact", crystal=replace(sc.crystal, mosaic_domains=30)), seed=i)

    exact30(0)
    out["baseline_exact_30_domains_images_per_s"] = _rate(exact30, 3)
    best = out[f"realistic_fast_images_per_s_{workers}proc"]
    out["speedup_vs_exact_30_domains"] = best / out["baseline_exact_30_domains_images_per_s"]
    out["speedup_vs_nanobragg_quoted"] = best * NANOBRAGG_SECONDS_PER_IMAGE
    return out


def dataset(repeats: int = 40, workers: int = 2) -> dict:
    """Images per second of the data set build (:func:`diffranb.dataset.build`), 512² frames.

    Builds ``8 · repeats`` frames on a local Dask cluster of 1 and of ``workers`` processes, wall clock
    from the call to the finished HDF5 file (cluster start, simulation, compression, shards, assembly), and
    a one-frame build for the fixed start-up cost; the 25,000-image figure extrapolates from the two.
    """
    from pathlib import Path

    from .dataset import build

    n = 8 * repeats
    out = {"cores": os.cpu_count(), "images": n}
    with tempfile.TemporaryDirectory(prefix="diffranb-bench-") as tmp:
        for w in sorted({1, workers}):
            t0 = time.perf_counter()
            build(1, 10**6 + w, Path(tmp) / f"start{w}.h5", workers=w, progress=False)
            start = time.perf_counter() - t0
            t0 = time.perf_counter()
            build(n, w, Path(tmp) / f"bench{w}.h5", workers=w, progress=False)
            wall = time.perf_counter() - t0
            out[f"startup_s_{w}w"] = start
            out[f"images_per_s_{w}w"] = n / wall
            out[f"steady_images_per_s_{w}w"] = n / max(wall - start, 1e-9)
            out[f"projected_25000_min_{w}w"] = (start + 25000 / out[f"steady_images_per_s_{w}w"]) / 60
    return out


_BENCH = {}


def _init_classic_worker(model, frames):
    if isinstance(model, str):  # a saved model's directory (DeepFreak networks do not pickle)
        from .evaluate import load_model

        model = load_model(model)
    set_threads(1, 1, 1)  # one thread per process (torch too, for a stacked model's networks)
    _BENCH.update(model=model, frames=frames)
    model.predict(frames[:1])  # compile and warm up before the clock


def _predict_range(bounds):
    a, b = bounds
    return _BENCH["model"].predict(_BENCH["frames"][a:b])


#: Passes over the benchmark frames per measurement, so that each lasts long enough to time.
CLASSIC_ROUNDS = 5

#: Frames a sorting pipeline is handed per call in ``bench classic``, ``stacked`` and ``deepfreak --model``,
#: on one core and on several processes alike: a forest's or a network's cost per call is spread over them.
#: At a 130 Hz detector, 32 frames are a quarter of a second.
SORT_BATCH = 32

#: Frames the sorting benches time by default: four calls of :data:`SORT_BATCH`, so that two processes get
#: two each per pass.
SORT_FRAMES = 128


def _batches(n_frames: int, batch: int) -> list[tuple[int, int]]:
    """``(a, b)`` bounds of consecutive calls of at most ``batch`` frames over frames 0 … ``n_frames``."""
    if batch < 1:
        raise ValueError(f"batch = {batch}: must be at least 1 frame per call")
    return [(a, min(a + batch, n_frames)) for a in range(0, n_frames, batch)]


def _bench_frames(tmp, repeats: int, pixels: int = 512):
    """A small set of ``pixels``² frames built in directory ``tmp`` (seed 7) and the 8-bit frames of its first
    ``repeats``."""
    from .dataset import build, open_dataset

    path = build(max(repeats, 120), 7, f"{tmp}/bench.h5", pixels=pixels, workers=0, progress=False)
    with open_dataset(path) as ds:
        return path, np.stack([ds.image8(i) for i in range(repeats)])


def _frames_per_s_processes(fitted, frames, workers: int, batch: int) -> float:
    """Frames per second of ``fitted.predict`` over :data:`CLASSIC_ROUNDS` passes of ``frames``, in calls of
    ``batch`` frames, on ``workers`` processes of one thread; ``fitted`` is a model or the directory each
    worker loads it from. Every worker holds the model and the frames already: what is timed is the work, not
    moving frames."""
    import pickle

    if not isinstance(fitted, str):
        fitted = pickle.loads(pickle.dumps(fitted))  # what the workers will receive
    return _rate_on_processes(_init_classic_worker, (fitted, frames), _predict_range, len(frames), workers,
                              batch)


def _rate_on_processes(initializer, initargs, task, n_frames: int, workers: int, batch: int) -> float:
    """Frames per second of ``task((a, b))`` over :data:`CLASSIC_ROUNDS` passes of frames 0 … ``n_frames``
    in calls of ``batch`` frames on ``workers`` spawned processes set up by ``initializer(*initargs)``; each
    process runs one call before the clock starts."""
    tasks = _batches(n_frames, batch) * CLASSIC_ROUNDS
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=initializer,
                             initargs=initargs) as pool:
        list(pool.map(task, tasks[:workers]))
        t0 = time.perf_counter()
        list(pool.map(task, tasks))
        return CLASSIC_ROUNDS * n_frames / (time.perf_counter() - t0)


def _spot_noise_rates(frames, window: int) -> dict:
    """Frames per second of the spot statistics' noise per annulus (:func:`diffranb.features._ring_noise`, from
    histograms) and of its sorting baseline (``np.median`` per annulus), on the same weighted sums, one thread,
    alternating, each the best of :data:`CLASSIC_ROUNDS` passes."""
    from . import features

    sums = []
    for image in frames:
        weighted = features.spot_sums(image, window)[0]
        _, order, bounds, _ = features._annuli(weighted.shape)
        sums.append(weighted.ravel()[order])
    best = {"histogram": 0.0, "sorting": 0.0}
    for _ in range(CLASSIC_ROUNDS):
        for name, fn in (("histogram", features._ring_noise), ("sorting", features._ring_noise_by_sorting)):
            t0 = time.perf_counter()
            for flat in sums:
                fn(flat, bounds, None)
            best[name] = max(best[name], len(sums) / (time.perf_counter() - t0))
    return {"spot_noise_frames_per_s_histogram": best["histogram"],
            "spot_noise_frames_per_s_sorting": best["sorting"],
            "spot_noise_speedup": best["histogram"] / best["sorting"]}


def _spot_statistics_rates(frames, windows, mask) -> dict:
    """Frames per second of the spot statistics of ``windows`` (with ``mask``), compiled
    (:func:`diffranb.features.spot_block`) and taken step by step with numpy and OpenCV
    (:func:`~diffranb.features._spot_features_reference`, the baseline they equal bit for bit); and of each
    median window above 5 × 5, :func:`~diffranb.features.median_filter` against OpenCV's ``medianBlur``. One
    thread, alternating, each the best of :data:`CLASSIC_ROUNDS` passes over ``frames``."""
    import cv2

    from . import features

    timed = {"spot_statistics_frames_per_s_compiled": lambda im: features.spot_block(im, windows, mask),
             "spot_statistics_frames_per_s_reference": lambda im: [features._spot_features_reference(im, w, mask)
                                                                    for w in windows]}
    wide = [w for w in windows if not isinstance(w, str) and w > 5]  # one pass of our own median filter
    for w in wide:
        timed[f"median_{w}x{w}_frames_per_s_compiled"] = lambda im, w=w: features.median_filter(im, w)
        timed[f"median_{w}x{w}_frames_per_s_opencv"] = lambda im, w=w: cv2.medianBlur(im, w)
    best = dict.fromkeys(timed, 0.0)
    with limited(1):
        for fn in timed.values():
            fn(frames[0])
        for _ in range(CLASSIC_ROUNDS):
            for name, fn in timed.items():
                t0 = time.perf_counter()
                for image in frames:
                    fn(image)
                best[name] = max(best[name], len(frames) / (time.perf_counter() - t0))
    out = dict(best)
    out["spot_statistics_speedup"] = best["spot_statistics_frames_per_s_compiled"] / \
        best["spot_statistics_frames_per_s_reference"]
    for w in wide:
        out[f"median_{w}x{w}_speedup"] = best[f"median_{w}x{w}_frames_per_s_compiled"] / \
            best[f"median_{w}x{w}_frames_per_s_opencv"]
    return out


def classic(repeats: int = SORT_FRAMES, workers: int = 2, model=None, batch: int = SORT_BATCH) -> dict:
    """Frames per second of a classic pipeline on 512² frames: feature extraction plus prediction.

    ``model`` is a saved model directory (:func:`diffranb.classic.save_model`); without one, the best
    pipeline of the full-scale search (:data:`CLASSIC_BEST`) is fitted on a small 512² set built here, which
    gives the same extraction cost (an SVM fitted on fewer frames keeps fewer support vectors, so pass the
    full-scale model to time its prediction). Timed over :data:`CLASSIC_ROUNDS` passes of ``repeats`` frames,
    handed over ``batch`` at a time, in this process with one thread and on ``workers`` processes that each
    hold the frames. A spot pipeline also gets the speed of its statistics, compiled and step by step
    (:func:`_spot_statistics_rates`), and of its noise estimate against the sorting baseline
    (:func:`_spot_noise_rates`, on its first window: ``spot_noise_window``).
    """
    from . import classic as cl
    from . import features

    out = {"cores": os.cpu_count(), "batch": min(batch, repeats)}
    calls = _batches(repeats, batch)
    with tempfile.TemporaryDirectory(prefix="diffranb-bench-") as tmp:
        path, frames = _bench_frames(tmp, repeats)
        if model is None:
            store = features.FeatureStore(path, f"{tmp}/features", workers=1, progress=False)
            fitted = cl.train(cl.ClassicConfig.from_dict(CLASSIC_BEST), store, n_jobs=1)
        else:
            fitted = cl.load_model(model)
    out["pipeline"] = fitted.config.label()
    classifier = fitted.pipeline[-1]
    if hasattr(classifier, "n_jobs"):
        classifier.n_jobs = 1
    with limited(1):  # OpenCV too: the spot statistics' median and box filters would use every core
        fitted.predict(frames[:2])
        extract = predict = 0.0
        for _ in range(CLASSIC_ROUNDS):
            for a, b in calls:
                t0 = time.perf_counter()
                x = fitted.transform(frames[a:b])
                t1 = time.perf_counter()
                fitted.pipeline.predict(x)
                extract, predict = extract + t1 - t0, predict + time.perf_counter() - t1
    n = CLASSIC_ROUNDS * repeats
    out["extract_frames_per_s_1core"] = n / extract
    out["predict_frames_per_s_1core"] = n / predict
    out["frames_per_s_1core"] = n / (extract + predict)
    if fitted.config.extractor == "spots":
        windows = features.spot_windows(fitted.config.window)
        out.update(_spot_statistics_rates(frames, windows, fitted.mask))
        out["spot_noise_window"] = windows[0]
        out.update(_spot_noise_rates(frames, windows[0]))
    out[f"frames_per_s_{workers}proc"] = _frames_per_s_processes(fitted, frames, workers, batch)
    return out


def _sorting_seconds(timed: dict, frames, batch: int) -> dict:
    """Seconds each callable of ``timed`` (name → f(frames)) takes over :data:`CLASSIC_ROUNDS` passes of
    ``frames`` in calls of ``batch``, in this process with one thread (numba, OpenCV, torch), alternating
    between them call by call, after a warm-up call each."""
    calls = _batches(len(frames), batch)
    seconds = dict.fromkeys(timed, 0.0)
    with limited(1):
        for fn in timed.values():
            fn(frames[:2])
        for _ in range(CLASSIC_ROUNDS):
            for a, b in calls:
                for name, fn in timed.items():
                    t0 = time.perf_counter()
                    fn(frames[a:b])
                    seconds[name] += time.perf_counter() - t0
    return seconds


def stacked(repeats: int = SORT_FRAMES, workers: int = 2, model=None, batch: int = SORT_BATCH) -> dict:
    """Frames per second of a saved stacked model (:mod:`diffranb.stack`) on 512² frames: every member's
    probabilities and the combiner, and each member alone, timed in the same run over
    :data:`CLASSIC_ROUNDS` passes of ``repeats`` frames, handed over ``batch`` at a time, in this process with
    one thread (numba, OpenCV, torch); then the whole model on ``workers`` processes of one thread that each
    hold the frames."""
    from . import stack

    if model is None:
        raise ValueError("bench stacked: --model (a saved stacked model directory) is required")
    fitted = stack.load_model(model)
    out = {"cores": os.cpu_count(), "pipeline": fitted.label(), "batch": min(batch, repeats)}
    with tempfile.TemporaryDirectory(prefix="diffranb-bench-") as tmp:
        frames = _bench_frames(tmp, repeats)[1]
    timed = {f"member {k + 1} ({label})": m.scores for k, (m, label) in
             enumerate(zip(fitted.members, fitted.label().split(" & ")))} | {"whole": fitted.predict}
    seconds = _sorting_seconds(timed, frames, batch)
    n = CLASSIC_ROUNDS * repeats
    for name, s in seconds.items():
        if name != "whole":
            out[f"{name} frames_per_s_1core"] = n / s
    out["frames_per_s_1core"] = n / seconds["whole"]
    out[f"frames_per_s_{workers}proc"] = _frames_per_s_processes(str(model), frames, workers, batch)
    return out


#: The pipeline ``diffranb bench classic`` times when given no model: the best of the full-scale search
#: (results/classic/metrics.json).
CLASSIC_BEST = {"extractor": "lbp", "points": 24, "radius": 3, "classifier": "svm", "C": 32768.0,
                "gamma": 2.0 ** -11, "class_weight": "none", "seed": 0}


def deepfreak(repeats: int = SORT_FRAMES, workers: int = 2, model=None, data=None, batch: int = SORT_BATCH) -> dict:
    """Frames per second of DeepFreak on 512² frames (:func:`diffranb.deepfreak.benchmark`), inference on 1
    and ``workers`` threads at batch 1 and 64. Each figure is timed for at least ``repeats / 8`` seconds
    after a warm-up call.

    Without ``model``: the paper's chosen topology with random weights, trained binned 4× and at full
    resolution (batch 16), inference at full resolution. ``model`` is a saved model directory: its topology
    at its binning, bin mode and training batch size, inference through the model itself (its input map
    included); then also ``frames_per_s_1core`` and ``frames_per_s_{workers}proc``, the model sorting
    ``repeats`` simulated frames of its size in calls of ``batch``, in one process of one thread and on
    ``workers`` processes of one thread each, as the classic pipelines are timed.

    With ``data`` (a built set), training is also timed on ``8 × repeats`` of its frames, read from the file
    every time and served from memory (:func:`diffranb.deepfreak.benchmark_frames`, keys ``frames_…``), with
    the model's topology, binning, bin mode and batch, or without a model :class:`~diffranb.deepfreak.TrainConfig`'s
    defaults."""
    from . import deepfreak as dfk
    from .dataset import open_dataset

    loaded = dfk.load_model(model) if model is not None else None
    out = dfk.benchmark(threads=tuple(sorted({1, workers})), min_seconds=repeats / 8, model=loaded)
    if data is not None:
        d = dfk.TrainConfig()
        top, binning, mode, batch = d.topology, d.binning, d.bin_mode, d.batch_size
        kind, mask = d.input, None
        if loaded is not None:
            top, binning, mode = out["topology"] - 1, loaded.binning, loaded.bin_mode
            batch, kind, mask = out["train_batch"], loaded.input, loaded.mask
        with open_dataset(data) as ds:
            frames = dfk.benchmark_frames(ds, top=top, binning=binning, mode=mode, batch=batch,
                                          n_frames=8 * repeats, input_kind=kind, mask=mask)
        out.update({f"frames_{k}": v for k, v in frames.items()})
    if loaded is not None:
        with tempfile.TemporaryDirectory(prefix="diffranb-bench-") as tmp:
            frames8 = _bench_frames(tmp, repeats, out["pixels"])[1]
        out["batch"] = min(batch, repeats)
        seconds = _sorting_seconds({"model": loaded.predict}, frames8, batch)["model"]
        out["frames_per_s_1core"] = CLASSIC_ROUNDS * repeats / seconds
        out[f"frames_per_s_{workers}proc"] = _frames_per_s_processes(str(model), frames8, workers, batch)
    return out


#: Training steps of :func:`malloc` are timed for at least this long (seconds) in each process.
MALLOC_TRAIN_SECONDS = 8.0


def _malloc_spots(bounds):
    from .features import spot_features

    a, b = bounds
    return [spot_features(_BENCH["frames"][i], 5, _BENCH["mask"]) for i in range(a, b)]


def _init_malloc_worker(frames, mask):
    set_threads(1, 1, 1)
    _BENCH.update(frames=frames, mask=mask)
    _malloc_spots((0, 1))


def _malloc_figures(data: str, workers: int, train_seconds: float) -> dict:
    """What :func:`malloc` measures in one fresh process, as floats: the spot statistics of the frames of set
    ``data`` on ``workers`` processes of one thread, each holding the frames, then DeepFreak training steps in
    this process."""
    import resource

    import torch

    from . import allocator, deepfreak, features
    from .dataset import open_dataset

    with open_dataset(data) as ds:
        frames = np.stack([ds.image8(i) for i in range(len(ds))])
    mask = features.detector_mask(frames)
    out = {"configured": float(allocator.configured())}
    per_call = -(-len(frames) // (2 * workers))  # two calls per process and pass
    out[f"spots_frames_per_s_{workers}proc"] = _rate_on_processes(_init_malloc_worker, (frames, mask), _malloc_spots,
                                                                  len(frames), workers, per_call)
    torch.set_num_threads(os.cpu_count() or 1)
    size = frames.shape[1] // 2
    out["train_images_per_s"] = deepfreak._train_rate(MALLOC_TOPOLOGY, 5, size, 16, np.random.default_rng(0),
                                                      train_seconds)
    out["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


#: The topology :func:`malloc` trains: the one of the full-scale 2 × 2 runs (``--topology 11``).
MALLOC_TOPOLOGY = 11


def malloc(repeats: int = 40, workers: int = 2, rounds: int = 2) -> dict:
    """diffranb's allocator settings (:mod:`diffranb.allocator`) against glibc's own, in the same run.

    Fresh processes, alternating ``DIFFRANB_MALLOC=glibc`` and diffranb's settings ``rounds`` times each, on
    a set of ``max(repeats, 120)`` simulated 512² frames: the spot statistics (window 5, with the frames'
    detector mask) on ``workers`` processes of one thread, as ``bench classic`` times pipelines, and SGD steps
    of DeepFreak's topology :data:`MALLOC_TOPOLOGY` on random inputs of a 2 × 2-binned frame's size (batch 16,
    every core), with the peak memory of the process that trains. The best round of each setting is printed,
    with the ratios."""

    out = {"cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="diffranb-bench-") as tmp:
        path = _bench_frames(tmp, repeats)[0]
        code = ("import json; from diffranb.bench import _malloc_figures; "
                f"print(json.dumps(_malloc_figures({str(path)!r}, {workers}, {MALLOC_TRAIN_SECONDS!r})))")
        best = {}
        for _ in range(rounds):
            for setting in ("glibc", "diffranb"):
                env = {k: v for k, v in os.environ.items() if k != "DIFFRANB_MALLOC"}
                if setting == "glibc":
                    env["DIFFRANB_MALLOC"] = "glibc"
                done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
                if done.returncode:
                    raise RuntimeError(f"bench malloc: the {setting} process failed:\n{done.stderr}")
                figures = json.loads(done.stdout.strip().splitlines()[-1])
                kept = best.setdefault(setting, figures)
                for key, value in figures.items():
                    better = min if "rss" in key else max
                    kept[key] = better(kept[key], value)
    if best["glibc"]["configured"] or not best["diffranb"]["configured"]:
        raise RuntimeError("bench malloc: the allocator settings were not applied as asked (not glibc, or glibc's "
                           "own settings in the environment: MALLOC_*_THRESHOLD_, GLIBC_TUNABLES)")
    for key in best["glibc"]:
        if key == "configured":
            continue
        for setting in ("glibc", "diffranb"):
            out[f"{key}_{setting}"] = best[setting][key]
        if "per_s" in key:
            out[f"{key}_ratio"] = best["diffranb"][key] / best["glibc"][key]
    return out


def sorting_rates(figures: dict, workers: int = 2) -> tuple[float, float]:
    """Frames per second from one core and from ``workers`` processes in the figures of ``bench classic``,
    ``bench deepfreak --model`` or ``bench stacked``, as printed with ``--json``. A network's record made
    before the sorting benches handed frames over in batches has no ``frames_per_s_1core``: its one-core
    figure is then inference at batch 1."""
    one = figures.get("frames_per_s_1core", figures.get("infer_frames_per_s_1thread_batch1"))
    many = figures.get(f"frames_per_s_{workers}proc")
    if one is None or many is None:
        raise KeyError(f"figures without a one-core and a {workers}-process sorting rate: {sorted(figures)}")
    return float(one), float(many)


def speed_table(speed_dir, workers: int = 2) -> list[dict]:
    """Each committed pipeline's test accuracy next to its sorting speed, from a folder of ``bench --json``
    records (``{"figures": ...}``, or several benches run one after another, ``{"runs": [{"name": ...,
    "figures": ...}, ...]}``) and its ``pipelines.json`` (name → ``speed`` file there, ``run`` name within it
    when it holds several, ``test`` record under the folder's parent, and ``method`` for a search report; see
    ``results/speed/`` and ``results/classic-spots-fast/``). Pipelines whose files are missing are left out;
    no ``pipelines.json``, no rows.

    Parameters
    ----------
    speed_dir : str or os.PathLike
        The folder of bench records and ``pipelines.json``.
    workers : int
        The processes of the multi-process figure to read (``frames_per_s_<workers>proc``).

    Returns
    -------
    list of dict
        ``name``, ``accuracy`` and ``binary_accuracy`` (per cent), ``one_core`` and ``processes`` (frames/s
        from one core and from ``workers`` processes), in the index's order.

    Raises
    ------
    ValueError
        When an entry names a run its file does not hold, names a run of a file of one bench, or names none of
        a file of several.
    """
    from pathlib import Path

    from .evaluate import read_test_record

    speed_dir = Path(speed_dir)
    index = speed_dir / "pipelines.json"
    if not index.is_file():
        return []
    rows = []
    for name, where in json.loads(index.read_text())["pipelines"].items():
        speed, test = speed_dir / where["speed"], speed_dir.parent / where["test"]
        if not (speed.is_file() and test.exists()):
            continue
        record = json.loads(speed.read_text())
        if ("run" in where) != ("runs" in record):
            raise ValueError(f"{index}: {name!r} " + (f"names run {where['run']!r} of {speed}, which holds one bench"
                                                     if "run" in where else
                                                     f"must name one of the runs {speed} holds ('run')"))
        if "run" in where:
            runs = {run["name"]: run["figures"] for run in record["runs"]}
            if where["run"] not in runs:
                raise ValueError(f"{index}: {name!r} names run {where['run']!r}, not in {speed} "
                                 f"(runs: {sorted(runs)})")
            figures = runs[where["run"]]
        else:
            figures = record["figures"]
        one_core, processes = sorting_rates(figures, workers)
        metrics = read_test_record(test, where.get("method", "best"))
        rows.append({"name": name, "accuracy": 100 * metrics["accuracy"],
                     "binary_accuracy": 100 * metrics["binary_accuracy"], "one_core": one_core,
                     "processes": processes})
    return rows


def read(repeats: int = 40, workers: int = 2, data=None, batch: int = SORT_BATCH) -> dict:
    """Frames per second of reading scattered frames from a built set, as :meth:`Dataset.batches
    <diffranb.dataset.Dataset.batches>` does for a split, a shuffled epoch or a stacked model's members:
    :func:`diffranb.dataset.read_frames` (one read per run of consecutive frames) against h5py's list
    indexing, the baseline, in the same run. ``repeats`` batches of ``batch`` increasing indices drawn at
    random (seed 0), alternating the two ways batch by batch, in this process. ``data``: a built set (default:
    120 frames of 512² built here). ``workers`` is not used: reading is timed in one process."""
    from .dataset import open_dataset, read_frames

    with tempfile.TemporaryDirectory(prefix="diffranb-bench-") as tmp:
        path = data if data is not None else _bench_frames(tmp, 1)[0]
        with open_dataset(path) as ds:
            images, n = ds.images, len(ds)
            rng = np.random.default_rng(0)
            wanted = [np.sort(rng.choice(n, min(batch, n), replace=False)) for _ in range(repeats)]
            seconds = {"runs": 0.0, "list": 0.0}
            for k, w in enumerate(wanted):
                got = {}
                for way in ("runs", "list")[::1 if k % 2 == 0 else -1]:  # which goes first alternates
                    t0 = time.perf_counter()
                    got[way] = read_frames(images, w) if way == "runs" else images[w]
                    seconds[way] += time.perf_counter() - t0
                fast, slow = got["runs"], got["list"]
                if not np.array_equal(fast, slow):
                    raise AssertionError(f"read_frames differs from h5py's list indexing at frames {w.tolist()}")
            out = {"frames_in_set": n, "frame_shape": "×".join(map(str, images.shape[1:])),
                   "compression": str(images.compression), "batch": min(batch, n)}
    total = repeats * min(batch, n)
    out["read_frames_per_s"] = total / seconds["runs"]
    out["h5py_list_frames_per_s"] = total / seconds["list"]
    out["speedup"] = seconds["list"] / seconds["runs"]
    return out


def _follow_child(model_dir, shape, directory, out, ready, poll_s, idle_s, workers):
    from . import sort
    from .evaluate import load_model

    model = load_model(model_dir)
    model.scores(np.zeros((1,) + tuple(shape), np.uint8))  # compiled and warm before the first frame
    sort.follow(model, directory, out, poll_s=poll_s, idle_timeout_s=idle_s, progress=False, warn=print,
                workers=workers, model_dir=model_dir, on_ready=ready.set)


#: Distinct frames bench follow writes, cycled (256 raw 512² frames are 128 MiB).
FOLLOW_FRAMES = 256


def follow(workers: int = 1, model=None, data=None, rate_hz: float | None = None, seconds: float = 30.0,
           poll_s: float = 0.1) -> dict:
    """A detector writing raw 16-bit frames (one ``.npy`` file each, written under a hidden name, then renamed)
    into a directory at ``rate_hz`` (default :data:`diffranb.evaluate.DETECTOR_RATE_HZ`) for ``seconds``,
    while ``diffranb sort --follow --workers`` (:func:`diffranb.sort.follow`) sorts them in another process,
    ``model`` loaded and warm before the first frame is written. With ``workers`` 1 that process sorts with
    its own threads; with more, it hands the calls to that many processes of one thread, which have loaded
    the model before the first frame is written. The frames are the first :data:`FOLLOW_FRAMES` of the test split of
    ``data`` (default: 120 frames of 512² built here), cycled.

    Returns
    -------
    dict
        ``written_hz`` (the rate reached), ``frames``, ``lag_s`` (from the last frame written to its row in the
        CSV), ``sorted_frames_per_s`` (frames over the time from the first frame written to the last row) and
        ``keeps_up`` (1.0 when every row was there within 1 s plus two polls of the last frame written).
    """
    import shutil

    from .dataset import open_dataset, read_frames

    from .evaluate import DETECTOR_RATE_HZ

    if model is None:
        raise ValueError("bench follow: --model (a saved model directory) is required")
    rate_hz = DETECTOR_RATE_HZ if rate_hz is None else rate_hz
    for name, value in (("--rate", rate_hz), ("--seconds", seconds)):
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"bench follow: {name} = {value}: must be a finite number > 0")
    with tempfile.TemporaryDirectory(prefix="diffranb-bench-") as tmp:
        path = data if data is not None else _bench_frames(tmp, 1)[0]
        with open_dataset(path) as ds:
            test = ds.indices("test")
            frames = read_frames(ds.images, (test if len(test) else np.arange(len(ds)))[:FOLLOW_FRAMES])
        n = int(round(rate_hz * seconds))
        run, out = Path(tmp) / "run", Path(tmp) / "sorted.csv"
        run.mkdir()
        ctx = mp.get_context("spawn")
        ready = ctx.Event()
        child = ctx.Process(target=_follow_child, args=(str(model), frames.shape[1:], str(run), str(out), ready,
                                                        poll_s, max(5.0, 20 * poll_s), workers))
        child.start()
        try:
            if not ready.wait(300):
                raise RuntimeError("bench follow: the model did not load within 300 s")
            t0 = time.monotonic()
            for k in range(n):
                wait = t0 + k / rate_hz - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                np.save(run / f".{k:07d}.npy", frames[k % len(frames)])
                os.replace(run / f".{k:07d}.npy", run / f"{k:07d}.npy")
            written = time.monotonic()
            rows = 0
            while rows < n and child.is_alive():
                with open(out) as handle:
                    rows = sum(1 for _ in handle) - 1
                if rows < n:
                    time.sleep(0.02)
            done = time.monotonic()
        finally:
            child.join(timeout=max(10.0, 25 * poll_s))
            if child.is_alive():
                child.terminate()
            shutil.rmtree(run, ignore_errors=True)
    if rows < n:
        raise RuntimeError(f"bench follow: {rows} of {n} frames sorted before the follower stopped")
    lag = done - written
    return {"model": str(model), "workers": workers, "rate_hz": rate_hz, "written_hz": n / (written - t0), "frames": n,
            "poll_s": poll_s, "lag_s": lag, "sorted_frames_per_s": n / (done - t0),
            "keeps_up": float(lag <= 1.0 + 2 * poll_s)}


#: The benches that time a model sorting frames, and take ``model`` and ``batch``.
SORTING_BENCHES = ("classic", "deepfreak", "stacked")


def run(what: str, *, repeats: int | None = None, workers: int = 2, model=None, data=None,
        batch: int | None = None, follow_options: dict | None = None) -> dict:
    """Run benchmark ``what`` and print its figures, one per line. ``repeats`` and ``batch`` default to each
    bench's own (:data:`SORT_FRAMES` and :data:`SORT_BATCH` for the sorting benches, 40 frames for the
    others)."""
    if what == "follow":
        if repeats is not None or batch is not None:
            raise ValueError("bench follow: --rate and --seconds, not --repeats or --batch")
        result = follow(workers=workers, model=model, data=data, **(follow_options or {}))
        _print_figures(result)
        return result
    kw = {} if repeats is None else {"repeats": repeats}
    if what in SORTING_BENCHES:
        kw["model"] = model
    if what in SORTING_BENCHES + ("read",):
        if batch is not None:
            kw["batch"] = batch
    elif batch is not None:
        raise ValueError(f"bench {what}: --batch is for bench {', '.join(SORTING_BENCHES)} and read only")
    if what in ("deepfreak", "read"):
        kw["data"] = data
    elif data is not None:
        raise ValueError(f"bench {what}: --data is for bench deepfreak, read and follow only")
    for name in ("repeats", "batch"):
        if name in kw and kw[name] < 1:
            raise ValueError(f"bench {what}: --{name} = {kw[name]}: must be at least 1")
    result = {"sim": sim, "dataset": dataset, "classic": classic, "deepfreak": deepfreak,
              "stacked": stacked, "malloc": malloc, "read": read}[what](workers=workers, **kw)
    _print_figures(result)
    return result


def _print_figures(result: dict) -> None:
    for key, value in result.items():
        print(f"{key:45s} {value:10.3f}" if isinstance(value, float) else f"{key:45s} {value:>10}")
