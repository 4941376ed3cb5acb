"""Hyperparameter search over DiffraNet's joint space of extractors and classifiers, with Hyperopt's TPE.

The space is the paper's Table 7 (:func:`space`): SVM (C, γ) or random forest (trees, features per split,
depth), class weights, and GLCM (any non-empty subsets of distances and angles), LBP (P, R) or SIFT
(vocabulary size). The objective is validation accuracy of a pipeline fitted on the training split, from
features a :class:`diffranb.features.FeatureStore` extracted once (:func:`run` extracts them all before the
first trial, so that a trial only fits).

Every trial is appended to a JSON file as soon as it is evaluated. Trial *i*'s suggestion uses a generator
seeded with ``(seed, i)``, and each fit is seeded, so an interrupted run resumed from its file continues
exactly as if it had never stopped (as long as no trial ran into its time limit).

Each fit runs in a worker process under a time limit: a trial that exceeds it is killed and recorded as
failed, so that one slow corner of the space (an SVM at C = 2¹⁵, a thousand deep trees over 5000 SIFT words)
cannot eat the budget.

References
----------
J. Bergstra, R. Bardenet, Y. Bengio, B. Kégl, "Algorithms for hyper-parameter optimization", NeurIPS 24
(2011) (TPE). J. Bergstra, D. Yamins, D. D. Cox, "Hyperopt: a Python library for optimizing the
hyperparameters of machine learning algorithms", SciPy 2013. https://doi.org/10.25080/Majora-8b375195-003
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import time
from functools import partial
from itertools import combinations
from pathlib import Path

import numpy as np

from . import classic, features

FORMAT = "diffranb-hyperopt/1"
#: Random trials before TPE starts modelling (Hyperopt's default).
STARTUP_TRIALS = 20
#: Seconds a trial's fit and validation may take before it is killed and recorded as failed.
DEFAULT_TIMEOUT_S = 120.0


def _subsets(values) -> list[tuple]:
    return [c for r in range(1, len(values) + 1) for c in combinations(values, r)]


def spot_window_choices(windows=features.SPOT_WINDOWS) -> list[tuple]:
    """The spot backgrounds the search chooses among: one of ``windows`` (a subset of
    :data:`~diffranb.features.SPOT_WINDOWS`), or any set of them side by side (their statistics concatenated,
    :func:`diffranb.features.spot_windows`)."""
    return _subsets(features.spot_windows(windows))


#: The default choices: every non-empty set of :data:`~diffranb.features.SPOT_WINDOWS`.
SPOT_WINDOW_CHOICES = spot_window_choices()


def space(extractors=features.PAPER_KINDS, windows=features.SPOT_WINDOWS):
    """The joint search space of DiffraNet's Table 7, as a Hyperopt expression.

    Every choice is categorical (``hp.choice``), so that TPE models each option's density separately.

    Parameters
    ----------
    extractors : tuple of str
        The extractors to search, in this order: by default the paper's three; ``"spots"`` (the spot
        statistics of :func:`diffranb.features.spot_features`, with any non-empty set of ``windows``,
        :func:`spot_window_choices`) goes beyond it.
    windows : tuple
        The spot backgrounds offered (default every one of :data:`~diffranb.features.SPOT_WINDOWS`).
    """
    from hyperopt import hp

    classifier = hp.choice("classifier", [
        {"classifier": "svm", "C": hp.choice("C", classic.SVM_C), "gamma": hp.choice("gamma", classic.SVM_GAMMA)},
        {"classifier": "rf", "n_estimators": hp.choice("n_estimators", classic.RF_TREES),
         "max_features": hp.choice("max_features", classic.RF_MAX_FEATURES),
         "max_depth": hp.choice("max_depth", classic.RF_MAX_DEPTH)},
    ])
    options = {
        "glcm": lambda: {"extractor": "glcm", "distances": hp.choice("distances", _subsets(features.GLCM_DISTANCES)),
                         "angles": hp.choice("angles", _subsets(features.GLCM_ANGLES))},
        "lbp": lambda: {"extractor": "lbp", "points": hp.choice("points", features.LBP_POINTS),
                        "radius": hp.choice("radius", features.LBP_RADII)},
        "sift": lambda: {"extractor": "sift", "words": hp.choice("words", features.SIFT_WORDS)},
        "spots": lambda: {"extractor": "spots", "window": hp.choice("window", spot_window_choices(windows))},
    }
    extractors = check_extractors(extractors)
    extractor = hp.choice("extractor", [options[name]() for name in extractors])
    return {"model": classifier, "features": extractor,
            "class_weight": hp.choice("class_weight", tuple(classic.CLASS_WEIGHTS))}


def check_extractors(extractors) -> tuple:
    """``extractors`` as a tuple, refused unless a non-empty list of distinct names of
    :data:`diffranb.features.KINDS`."""
    extractors = tuple(extractors)
    if not extractors or len(set(extractors)) != len(extractors) or not set(extractors) <= set(features.KINDS):
        raise ValueError(f"extractors = {extractors!r}: must be distinct names among {features.KINDS}")
    return extractors


def config_from_sample(sample: dict, seed: int = 0) -> classic.ClassicConfig:
    """The :class:`~diffranb.classic.ClassicConfig` of one point of :func:`space`."""
    fields = dict(sample["model"]) | dict(sample["features"]) | {"class_weight": sample["class_weight"],
                                                                   "seed": seed}
    return classic.ClassicConfig(**fields)


# ---------------------------------------------------------------------------------------------------------
# Fitting one trial in a worker process, under a time limit
# ---------------------------------------------------------------------------------------------------------

_STORE = None


def _worker_main(conn, data, cache_dir, n_jobs):
    global _STORE
    _STORE = features.FeatureStore(data, cache_dir, workers=1, progress=False)
    while True:
        message = conn.recv()
        if message is None:
            return
        try:
            conn.send(("ok", validation_accuracy(classic.ClassicConfig.from_dict(message), _STORE, n_jobs=n_jobs)))
        except Exception as exc:  # reported as a failed trial, the search goes on
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


def validation_accuracy(config: classic.ClassicConfig, store, *, n_jobs: int = 2) -> dict:
    """Fit ``config`` on the training split and score it on the validation split.

    Returns
    -------
    dict
        ``val_accuracy``, ``fit_s`` and ``predict_s`` (wall seconds), ``cpu_s`` (CPU seconds of all threads,
        which unlike wall time does not depend on what else the machine runs).
    """
    x = store.features(config.extractor, **config.feature_params())
    train, val = store.indices("train"), store.indices("val")
    pipeline = classic.make_pipeline(config, len(store.classes), n_jobs=n_jobs)
    start, cpu = time.perf_counter(), time.process_time()
    pipeline.fit(np.asarray(x[train], dtype=np.float64), store.labels[train])
    fitted = time.perf_counter()
    accuracy = float(np.mean(pipeline.predict(np.asarray(x[val], dtype=np.float64)) == store.labels[val]))
    return {"val_accuracy": accuracy, "fit_s": fitted - start, "predict_s": time.perf_counter() - fitted,
            "cpu_s": time.process_time() - cpu}


class TrialRunner:
    """A worker process that fits trials one at a time and is replaced when one runs out of time."""

    def __init__(self, data, cache_dir, *, n_jobs: int = 2, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.args = (str(data), None if cache_dir is None else str(cache_dir), n_jobs)
        self.timeout_s = timeout_s
        self.process = self.conn = None

    def _start(self):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child,) + self.args)  # not a daemon: joblib refuses to fork from one
        self.process.start()
        child.close()

    def __call__(self, config: classic.ClassicConfig) -> dict:
        """Fit and score ``config``: the scores, or ``{"error": ...}`` after an exception or the time limit."""
        if self.process is None or not self.process.is_alive():
            self._start()
        start = time.perf_counter()
        self.conn.send(config.to_dict())
        if not self.conn.poll(self.timeout_s):
            self.close(kill=True)
            return {"error": f"timeout after {self.timeout_s:.0f} s", "seconds": time.perf_counter() - start}
        try:
            status, value = self.conn.recv()
        except EOFError:
            self.close(kill=True)
            return {"error": "worker died", "seconds": time.perf_counter() - start}
        out = value if status == "ok" else {"error": value}
        return out | {"seconds": time.perf_counter() - start}

    def close(self, kill: bool = False):
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            try:
                self.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        self.process.join(timeout=30)
        self.conn.close()
        self.process = self.conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


# ---------------------------------------------------------------------------------------------------------
# The search: persisted, resumable
# ---------------------------------------------------------------------------------------------------------

def _header(store, seed, timeout_s, extractors, windows=features.SPOT_WINDOWS) -> dict:
    from . import __version__

    space_name = "DiffraNet Table 7" if extractors == features.PAPER_KINDS else \
        "DiffraNet Table 7 classifiers; extractors " + ", ".join(extractors)
    return {"format": FORMAT, "dataset_sha256": store.content_sha256, "data": str(store.data), "seed": seed,
            "space": space_name, "extractors": list(extractors),
            "extractor_versions": {k: features.EXTRACTOR_VERSIONS[k] for k in extractors},
            **({"spot_windows": [list(w) for w in spot_window_choices(windows)]} if "spots" in extractors else {}),
            "startup_trials": STARTUP_TRIALS,
            "timeout_s": timeout_s, "diffranb_version": __version__}


def _resumed_windows(out) -> tuple:
    """The spot backgrounds a trials file offered (each choice of one background among its choices), or () when
    the file does not exist, holds no spot search, or names no choices."""
    out = Path(out)
    if not out.exists():
        return ()
    try:
        record = load_trials(out)
        if "spots" not in record.get("extractors", ()):
            return ()
        choices = record.get("spot_windows", [[w] for w in features.PLAIN_SPOT_WINDOWS])
        return features.spot_windows([c[0] for c in choices if len(c) == 1])
    except (json.JSONDecodeError, AttributeError, TypeError, IndexError, ValueError) as exc:
        raise ValueError(f"{str(out)!r} is not a diffranb trials file whose search can be resumed ({exc})") from None


def load_trials(path) -> dict:
    """A trials file written by :func:`run`: its header and ``trials`` (one dict per evaluated trial)."""
    record = json.loads(Path(path).read_text())
    if record.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a diffranb Hyperopt trials file")
    return record


def _save(path: Path, record: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


def _hyperopt_trials(records: list):
    """Hyperopt's ``Trials`` rebuilt from persisted records (their choice indices and losses)."""
    from hyperopt import JOB_STATE_DONE, STATUS_FAIL, STATUS_OK, Trials

    trials = Trials()
    for r in records:
        tid = r["tid"]
        result = {"status": STATUS_OK, "loss": r["loss"]} if r["loss"] is not None else {"status": STATUS_FAIL}
        misc = {"tid": tid, "cmd": ("domain_attachment", "FMinIter_Domain"), "workdir": None,
                "idxs": {k: ([tid] if v else []) for k, v in r["vals"].items()},
                "vals": {k: list(v) for k, v in r["vals"].items()}}
        docs = trials.new_trial_docs([tid], [None], [result], [misc])
        for doc in docs:
            doc["state"] = JOB_STATE_DONE
        trials.insert_trial_docs(docs)
    trials.refresh()
    return trials


def run(data, out, *, n_trials: int = 150, seed: int = 0, cache_dir=None, timeout_s: float = DEFAULT_TIMEOUT_S,
        workers: int = 2, progress: bool = True, stop_after: int | None = None,
        extractors=features.PAPER_KINDS, windows=None) -> dict:
    """Run (or resume) a TPE search of :func:`space` on a data set, persisting every trial to ``out``.

    Parameters
    ----------
    data : str or os.PathLike
        A data set built by :func:`diffranb.dataset.build`.
    out : str or os.PathLike
        JSON trials file. If it exists, the search resumes from it (same data set and seed required).
    n_trials : int
        Trials in total, counting those already in ``out``.
    seed : int
        Seed of the suggestions, the fits and the SIFT vocabularies.
    cache_dir : str or os.PathLike, optional
        Feature cache (default beside the data set).
    timeout_s : float
        Time limit of one trial's fit and validation, seconds.
    workers : int
        Processes for feature extraction, and jobs of the random forests.
    progress : bool
        Progress bars for the extraction and one line per trial (stderr).
    stop_after : int, optional
        Evaluate at most this many new trials now (to interrupt on purpose; the file resumes later).
    extractors : tuple of str
        Extractors of the space (:func:`space`); a resumed search must keep them.
    windows : tuple, optional
        Spot backgrounds offered (:func:`spot_window_choices`). Default: a resumed search's own, else every
        one of :data:`~diffranb.features.SPOT_WINDOWS`. A resumed search must keep them.

    Returns
    -------
    dict
        The trials file's content: header, ``trials``, ``best`` and ``search_seconds``.
    """
    import sys

    from hyperopt import STATUS_FAIL, STATUS_OK, fmin, tpe

    out = Path(out)
    if not out.parent.is_dir():
        raise ValueError(f"out = {str(out)!r}: directory {str(out.parent)!r} does not exist")
    store = features.FeatureStore(data, cache_dir, workers=workers, progress=progress)
    extractors = check_extractors(extractors)
    if windows is None:
        windows = _resumed_windows(out) or features.SPOT_WINDOWS
    windows = features.spot_windows(windows)
    header = _header(store, seed, timeout_s, extractors, windows)
    if out.exists():
        record = load_trials(out)
        record.setdefault("extractors", list(features.PAPER_KINDS))  # files written before the option
        record.setdefault("extractor_versions", {k: 1 for k in record["extractors"]})  # ... before versions
        if "spots" in record["extractors"]:  # ... and before sets of windows, when each was a choice alone
            record.setdefault("spot_windows", [[w] for w in features.PLAIN_SPOT_WINDOWS])
        for key in ("dataset_sha256", "seed", "extractors", "extractor_versions", "spot_windows"):
            if record.get(key) != header.get(key):
                raise ValueError(f"{str(out)!r} was run with {key} = {record.get(key)!r}, not {header.get(key)!r}: "
                                 "choose another file to start a new search")
        record["timeout_s"] = timeout_s  # the limit of the latest session (a resumed search may change it)
    else:
        record = header | {"trials": [], "search_seconds": 0.0, "extract_seconds": 0.0}
    done = record["trials"]
    if len(done) >= n_trials:
        return record

    start = time.perf_counter()
    store.precompute(extractors)
    if "sift" in extractors:
        for k in features.SIFT_WORDS:
            store.features("sift", k=k, seed=seed)
    record["extract_seconds"] += time.perf_counter() - start

    trials = _hyperopt_trials(done)
    sp = space(extractors, windows)
    algo = partial(tpe.suggest, n_startup_jobs=STARTUP_TRIALS)
    budget = len(done) + (n_trials - len(done) if stop_after is None else min(stop_after, n_trials - len(done)))
    with TrialRunner(data, cache_dir, n_jobs=workers, timeout_s=timeout_s) as runner:
        while len(trials) < budget:
            evaluated = {}

            def objective(sample):
                config = config_from_sample(sample, seed)
                result = runner(config)
                evaluated.update(config=config, result=result)
                if "error" in result:
                    return {"status": STATUS_FAIL}
                return {"status": STATUS_OK, "loss": 1.0 - result["val_accuracy"]}

            tick = time.perf_counter()
            fmin(objective, sp, algo=algo, max_evals=len(trials) + 1, trials=trials,
                 rstate=np.random.default_rng([seed, len(trials)]), show_progressbar=False)
            last = trials.trials[-1]
            result = evaluated["result"]
            rec = {"tid": int(last["tid"]), "vals": {k: [_plain(x) for x in v] for k, v in last["misc"]["vals"].items()},
                   "config": evaluated["config"].to_dict(), "label": evaluated["config"].label(),
                   "loss": None if "error" in result else 1.0 - result["val_accuracy"]} | result
            done.append(rec)
            record["search_seconds"] += time.perf_counter() - tick
            record["best"] = best_trial(record)
            _save(out, record)
            if progress:
                acc = "failed: " + result["error"] if "error" in result else f"val {result['val_accuracy']:.4f}"
                print(f"trial {len(done):3d}/{n_trials} {rec['label']:9s} {acc} ({result['seconds']:.1f} s)",
                      file=sys.stderr, flush=True)
    return record


def _plain(x):
    return int(x) if float(x).is_integer() else float(x)


def best_trial(record: dict) -> dict | None:
    """The trial of highest validation accuracy (the first among equals), or None if all failed."""
    ok = [t for t in record["trials"] if t["loss"] is not None]
    return min(ok, key=lambda t: t["loss"]) if ok else None


def best_config(path) -> classic.ClassicConfig:
    """The :class:`~diffranb.classic.ClassicConfig` of the best trial in a trials file."""
    best = best_trial(load_trials(path))
    if best is None:
        raise ValueError(f"{str(path)!r}: no trial succeeded")
    return classic.ClassicConfig.from_dict(best["config"])


def best_per_label(record: dict) -> dict:
    """Best trial of each classifier + extractor pair (``"RF+GLCM"``, ``"SVM+SIFT"``, ...)."""
    out = {}
    for t in record["trials"]:
        if t["loss"] is not None and (t["label"] not in out or t["loss"] < out[t["label"]]["loss"]):
            out[t["label"]] = t
    return out


def losses(record: dict) -> np.ndarray:
    """Validation loss (1 − accuracy) of every trial in order, NaN for failed ones."""
    return np.array([math.nan if t["loss"] is None else t["loss"] for t in record["trials"]], dtype=np.float64)


# ---------------------------------------------------------------------------------------------------------
# From a finished search to test-set results
# ---------------------------------------------------------------------------------------------------------

#: Pipelines :func:`report` refits and tests: the paper's two classic winners, and the search's best.
#: Pipelines whose best trial :func:`report` refits and tests when the search tried them (and the overall best).
REPORTED = ("RF+GLCM", "SVM+GLCM", "RF+SPOTS", "SVM+SPOTS", "best")


def report(trials, data, out_dir, *, models_dir=None, cache_dir=None, workers: int = 2, command: str = "",
           progress: bool = False) -> dict:
    """Refit the best configuration of each pipeline in :data:`REPORTED` on the training split, test it, and
    write ``metrics.json``, ``search.png`` and ``confusion.png`` into ``out_dir``.

    Parameters
    ----------
    trials : str or os.PathLike
        A trials file of :func:`run`.
    data : str or os.PathLike
        The data set it searched (its content hash must match).
    out_dir : str or os.PathLike
        Created if missing.
    models_dir : str or os.PathLike, optional
        Where to save the refitted models (:func:`diffranb.classic.save_model`), one directory per pipeline.
    cache_dir, workers, progress
        As for :class:`diffranb.features.FeatureStore`.
    command : str
        The command that produced the results, recorded with them.

    Returns
    -------
    dict
        What ``metrics.json`` holds: provenance (command, diffranb version, data set hash, wall times), the
        search summary, and per pipeline its configuration, validation and test metrics.
    """
    import matplotlib

    from . import __version__, dataset, evaluate, viz

    start = time.perf_counter()
    record = load_trials(trials)
    store = features.FeatureStore(data, cache_dir, workers=workers, progress=progress)
    if store.content_sha256 != record["dataset_sha256"]:
        raise ValueError(f"{str(trials)!r} searched data set {record['dataset_sha256'][:16]}…, "
                         f"not {str(data)!r} ({store.content_sha256[:16]}…)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = best_per_label(record)
    if record.get("best"):
        chosen["best"] = record["best"]
    methods = {}
    with dataset.open_dataset(data) as ds:
        for name in REPORTED:
            if name not in chosen:
                continue
            config = classic.ClassicConfig.from_dict(chosen[name]["config"])
            model = classic.train(config, store, n_jobs=workers)
            if models_dir is not None:
                classic.save_model(model, Path(models_dir) / name.lower().replace("+", "_"))
            test = evaluate.evaluate_model(model, ds, "test")
            methods[name] = {"label": config.label(), "config": config.to_dict(),
                             "val_accuracy": 1 - chosen[name]["loss"], "fit_seconds": model.info["fit_seconds"],
                             "test": test}
        n_images = len(ds)
    trial_losses = losses(record)
    result = {
        "command": command, "diffranb_version": __version__, "dataset_sha256": store.content_sha256,
        "data": str(data), "n_images": n_images, "shape": list(store.shape[1:]),
        "hyperopt": {"trials": len(record["trials"]), "failed": int(np.isnan(trial_losses).sum()),
                     "search_seconds": record["search_seconds"], "extract_seconds": record["extract_seconds"],
                     "trial_wall_seconds": float(sum(t.get("seconds", 0.0) for t in record["trials"])),
                     "trial_cpu_seconds": float(sum(t.get("cpu_s", 0.0) for t in record["trials"])),
                     "seed": record["seed"], "timeout_s": record["timeout_s"],
                     "best_label": record["best"]["label"] if record.get("best") else None,
                     "trials_by_label": {k: int(v) for k, v in
                                         zip(*np.unique([t["label"] for t in record["trials"]], return_counts=True))}},
        "methods": methods, "paper": evaluate.PAPER, "report_seconds": time.perf_counter() - start,
    }
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=1))
    with matplotlib.rc_context({"figure.dpi": 110}):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7.5, 3.8), layout="constrained")
        viz.plot_search(trial_losses, [t["label"] for t in record["trials"]], ax=ax)
        fig.savefig(out_dir / "search.png")
        plt.close(fig)
        if methods:
            fig = viz.plot_report_confusions(result)
            fig.savefig(out_dir / "confusion.png")
            plt.close(fig)
    return result


def load_report(out_dir) -> dict | None:
    """The ``metrics.json`` that :func:`report` wrote into ``out_dir``, or None when there is none."""
    from .io import load_record

    return load_record(out_dir, ("methods", "hyperopt"), "diffranb.tune.report")


def describe_report(result: dict) -> str:
    """A record of :func:`report` as text: the command, version, data set and search time, then every
    pipeline's test metrics side by side with the paper's (:func:`diffranb.evaluate.format_report`)."""
    from . import evaluate

    h = result["hyperopt"]
    failed = f" ({h['failed']} failed or over the time limit)" if h["failed"] else ""
    # features found in the cache take no time to extract: say so rather than "0.0 min"
    extraction = (f" after {h['extract_seconds'] / 60:.1f} min of feature extraction"
                  if h["extract_seconds"] >= 3.0 else ", on features already cached")
    lines = [f"command: {result['command'] or '(not recorded)'}",
             f"diffranb {result['diffranb_version']}, data set {result['dataset_sha256'][:16]}…, "
             f"{result['n_images']} frames of {' × '.join(str(n) for n in result['shape'])} px",
             f"{h['trials']} trials{failed} in {h['search_seconds'] / 60:.1f} min{extraction}; "
             f"best {h['best_label'] or '(none succeeded)'}",
             "",
             evaluate.format_report({(f"best ({m['label']})" if name == "best" else name): m["test"]
                                     for name, m in result["methods"].items()})]
    return "\n".join(lines)


def run_bohb(data, out, **kwargs):
    """BOHB (hpbandster) over DeepFreak's topologies and training hyperparameters: see
    :func:`diffranb.bohb.run_bohb`, which this calls with the same arguments (torch and hpbandster are
    imported only then)."""
    from . import bohb

    return bohb.run_bohb(data, out, **kwargs)
