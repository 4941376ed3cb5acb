"""BOHB for DeepFreak: topology and training hyperparameters searched with hpbandster, on one machine or many.

BOHB (Falkner et al. 2018) runs Hyperband's brackets of successive halving, with budgets in epochs growing by
``eta``, and picks new configurations from kernel density estimates of the good and the bad ones seen so far.
:func:`run_bohb` drives the whole search in one call:

- it starts a Pyro nameserver on 127.0.0.1 at a free port (another interface only when asked for, see
  *Distributed* below), ``n_workers`` local worker processes, the optimiser, and stops them all at the end,
  also after an error, a timeout or Ctrl-C;
- every evaluation is appended to hpbandster's JSON result log (``configs.json``, ``results.json``) as it
  finishes; calling :func:`run_bohb` again on the same ``out`` warm-starts from that log (hpbandster's
  ``previous_result``) and runs only the iterations still missing, so a killed search loses at most the
  evaluations that were running;
- an evaluation that raises is logged with its traceback and counts as a failed configuration (infinite loss);
  :func:`run_bohb` reports every failure, and raises if nothing succeeded. A worker process that dies is
  noticed by hpbandster's dispatcher; if every local worker is gone the search stops rather than wait. A
  training that diverges, or a configuration that cannot train at the input size, is no failure: it scores
  0 % (loss 1) and says why in its ``info``;
- ``timeout`` bounds the whole call: the search stops scheduling, the running evaluations are abandoned.

Evaluations of one configuration at growing budgets reuse each other's checkpoints (:func:`diffranb.deepfreak.
train` resumes; the learning-rate schedule depends only on the epoch), so promoting a configuration from 3 to
9 epochs costs 6 epochs, not 9. The result equals training from scratch for 9 (on the same machine and
thread count).

Distributed (hpbandster's own mode): start the search with ``host`` set to an address the other machines
reach and a fixed ``port`` (``diffranb tune bohb --host 10.0.0.5 --port 9090 --workers 1 ...``), then on
each other machine ``diffranb tune bohb-worker --nameserver 10.0.0.5:9090 --host THAT_MACHINE --data
SET.h5 --workdir DIR`` with the same ``--binning --bin-mode --max-train --max-val --seed`` (each evaluation
reports these settings and the search counts results computed with others as failures). Pyro here exchanges
pickles (hpbandster's configurations do not survive Pyro's safe serializer), so only open a nameserver to a
network of machines you trust.

References
----------
S. Falkner, A. Klein, F. Hutter, "BOHB: robust and efficient hyperparameter optimization at scale", ICML 2018,
https://proceedings.mlr.press/v80/falkner18a.html
A. Souza et al., DiffraNet / DeepFreak (2019), https://arxiv.org/abs/1904.11834 (search space: Table 9).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing as mp
import os
import shutil
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .deepfreak import BATCH_SIZES, TOPOLOGIES, Diverged, Infeasible, TrainConfig, check_bin_mode, train

#: The paper's search space (Table 9): ranges of each hyperparameter. Batch sizes: Table 9 lists 4–64, the
#: paper's best configurations used 1 and 2, so all of 1–64 are searched.
SEARCH_SPACE = {
    "topology": tuple(range(len(TOPOLOGIES))),  # index into deepfreak.TOPOLOGIES
    "learning_rate": (1e-4, 10.0),  # log-uniform
    "momentum": (0.5, 1.0),  # uniform
    "weight_decay": (1e-5, 5e-5),  # uniform
    "batch_size": BATCH_SIZES,  # frames
}

LOG_FILES = ("configs.json", "results.json")

_PYRO_ENV = {"PYRO_SERIALIZER": "pickle", "PYRO_SERIALIZERS_ACCEPTED": "serpent,json,marshal,pickle"}


def _configure_pyro() -> None:
    """Let Pyro carry pickles: hpbandster's configurations (NumPy scalars) do not survive serpent, and with
    serpent a run hangs instead of failing. Set in the environment too, for the worker processes."""
    os.environ.update(_PYRO_ENV)
    import Pyro4

    Pyro4.config.SERIALIZER = "pickle"
    Pyro4.config.SERIALIZERS_ACCEPTED = set(_PYRO_ENV["PYRO_SERIALIZERS_ACCEPTED"].split(","))


def _quiet() -> None:
    # statsmodels' KDE (BOHB's model) warns about a future NumPy default on every fit; nothing to act on
    warnings.filterwarnings("ignore", message=".*entropy initialized numpy.random.Generator.*")
    # hpbandster 0.7.4 calls ConfigSpace 0.x names that ConfigSpace 1.x keeps, deprecated
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="hpbandster")
    logging.getLogger("hpbandster").setLevel(logging.ERROR)
    logging.getLogger("Pyro4").setLevel(logging.ERROR)


def config_space(seed: int = 0, space: dict | None = None):
    """The BOHB search space as a ConfigSpace ``ConfigurationSpace``.

    Parameters
    ----------
    seed : int
        Seed of its random sampling.
    space : dict, optional
        Overrides of :data:`SEARCH_SPACE` (same keys), e.g. fewer topologies for a short search.
    """
    import ConfigSpace as CS

    s = {**SEARCH_SPACE, **(space or {})}
    unknown = set(s) - set(SEARCH_SPACE)
    if unknown:
        raise ValueError(f"space: unknown hyperparameters {sorted(unknown)}; they are {sorted(SEARCH_SPACE)}")
    cs = CS.ConfigurationSpace(seed=seed)
    cs.add([
        CS.Categorical("topology", [int(t) for t in s["topology"]]),
        CS.Float("learning_rate", tuple(s["learning_rate"]), log=True),
        CS.Float("momentum", tuple(s["momentum"])),
        CS.Float("weight_decay", tuple(s["weight_decay"])),
        CS.Categorical("batch_size", [int(b) for b in s["batch_size"]]),
    ])
    return cs


def budgets(min_budget: float, max_budget: float, eta: float = 3) -> list:
    """Hyperband's budgets, from ``max_budget`` down by factors of ``eta`` while ≥ ``min_budget``.

    >>> budgets(1, 9, 3)
    [1.0, 3.0, 9.0]
    """
    if not 0 < min_budget <= max_budget or eta <= 1:
        raise ValueError(f"budgets ({min_budget}, {max_budget}, eta {eta}): need 0 < min ≤ max and eta > 1")
    n = int(math.floor(math.log(max_budget / min_budget) / math.log(eta) + 1e-9))
    return [float(max_budget * eta ** -k) for k in range(n, -1, -1)]


def _plain(x):
    """JSON-safe copy: NumPy scalars become Python numbers."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


# ---------------------------------------------------------------------------------------------------------
# The objective: one DeepFreak training per evaluation
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DeepFreakObjective:
    """Train DeepFreak for ``budget`` epochs with one configuration; loss = 1 − validation accuracy.

    Picklable, so that worker processes (and machines) each hold a copy.

    Attributes
    ----------
    data : str
        The data set (HDF5) as this worker sees it.
    workdir : str
        Where the evaluations' checkpoints go (one directory per configuration).
    binning : int, px
    bin_mode : {"mean", "max"}
        How the input is binned (:func:`diffranb.deepfreak.bin_images`): fixed for the whole search, not searched.
    max_train, max_val : int or None, frames
        Seeded class-stratified subsets of the splits (None: whole splits).
    seed : int
    threads : int or None
        torch threads per evaluation.
    """

    data: str  # path of the HDF5 set
    workdir: str  # path of the checkpoints
    binning: int = 4  # px
    bin_mode: str = "mean"  # "mean" or "max" of each binning × binning block
    max_train: int | None = None  # frames
    max_val: int | None = None  # frames
    seed: int = 0  # of the weights, the frame order and the subsets
    threads: int | None = None  # torch threads

    def __post_init__(self):
        check_bin_mode(self.bin_mode, "DeepFreakObjective.bin_mode")

    def settings(self) -> dict:
        """What must agree between the search and every worker.

        ``bin_mode`` is listed only when it is not ``"mean"``: logs written before the option existed, all
        mean-binned, then still agree with a mean-binned search.
        """
        extra = {} if self.bin_mode == "mean" else {"bin_mode": self.bin_mode}
        return {"binning": self.binning, **extra, "max_train": self.max_train, "max_val": self.max_val,
                "seed": self.seed}

    def train_config(self, config: dict, budget: float) -> TrainConfig:
        return TrainConfig(topology=int(config["topology"]), learning_rate=float(config["learning_rate"]),
                           momentum=float(config["momentum"]), weight_decay=float(config["weight_decay"]),
                           batch_size=int(config["batch_size"]), epochs=max(1, int(round(budget))),
                           binning=self.binning, bin_mode=self.bin_mode, seed=self.seed, max_train=self.max_train,
                           max_val=self.max_val)

    def __call__(self, config: dict, budget: float) -> dict:
        cfg = self.train_config(config, budget)
        key = hashlib.sha256(json.dumps(dataclasses.asdict(dataclasses.replace(cfg, epochs=1)),
                                        sort_keys=True).encode()).hexdigest()[:16]
        ds, frames = _frame_store(self)
        try:
            result = train(ds, Path(self.workdir) / key, cfg, save_best=False, progress=False,
                           threads=self.threads, frames=frames)
        except Diverged as exc:
            # a legitimate outcome of a high learning rate, not a failure: the worst loss there is
            return {"loss": 1.0, "info": {"val_accuracy": 0.0, "diverged": str(exc), "settings": self.settings()}}
        except Infeasible as exc:
            return {"loss": 1.0, "info": {"val_accuracy": 0.0, "infeasible": str(exc), "settings": self.settings()}}
        last = result.history[-1]
        return {"loss": 1.0 - last["val_accuracy"],
                "info": {"val_accuracy": last["val_accuracy"], "val_loss": last["val_loss"],
                         "train_accuracy": last["train_accuracy"], "train_loss": last["train_loss"],
                         "history": result.history, "epochs_computed": len(result.history) - result.resumed_from,
                         "seconds": result.seconds, "settings": self.settings()}}


#: Per process: the open data set and its store of binned frames for the latest objective's settings, kept
#: across evaluations so that a worker reads each training and validation frame of its subsets once per search.
_FRAME_STORES = {}


def _frame_store(objective: DeepFreakObjective):
    """The open data set and :class:`~diffranb.deepfreak.BinnedFrames` of ``objective``'s frames, made once
    per process."""
    from .dataset import open_dataset
    from .deepfreak import BinnedFrames, subset

    path = Path(objective.data).resolve()
    st = path.stat()  # a file written again at the same path is another set
    key = (str(path), st.st_ino, st.st_mtime_ns, st.st_size, objective.binning, objective.bin_mode,
           objective.max_train, objective.max_val, objective.seed)
    if key not in _FRAME_STORES:
        for old_ds, _ in _FRAME_STORES.values():  # a worker serves one search: keep one store at a time
            old_ds.close()
        _FRAME_STORES.clear()
        ds = open_dataset(objective.data)
        indices = np.concatenate([subset(ds, "train", objective.max_train, objective.seed),
                                  subset(ds, "val", objective.max_val, objective.seed)])
        _FRAME_STORES[key] = (ds, BinnedFrames(ds, objective.binning, objective.bin_mode, indices))
    return _FRAME_STORES[key]


def _make_worker(objective, run_id, nameserver, nameserver_port, host, worker_id):
    from hpbandster.core.worker import Worker

    class _Worker(Worker):
        def compute(self, config, budget, working_directory=None, config_id=None, **kwargs):
            return objective(_plain(config), float(budget))

    # without a logger of its own, hpbandster's Worker sets the root logger to DEBUG for the whole process
    logger = logging.getLogger("diffranb.bohb.worker")
    logger.setLevel(logging.WARNING)
    return _Worker(run_id=run_id, nameserver=nameserver, nameserver_port=int(nameserver_port), host=host,
                   id=worker_id, logger=logger)


def _worker_process(objective, run_id, nameserver, nameserver_port, host, worker_id, threads):
    """Body of a local worker process: serve evaluations until the search shuts the worker down."""
    _configure_pyro()
    _quiet()
    if threads:
        import torch

        torch.set_num_threads(threads)
    _make_worker(objective, run_id, nameserver, nameserver_port, host, worker_id).run(background=False)


def run_worker(objective, *, nameserver: str, nameserver_port: int, run_id: str = "deepfreak",
               host: str = "127.0.0.1", worker_id: str | None = None) -> None:
    """Join a running search as a worker and serve evaluations until it ends (blocks).

    Parameters
    ----------
    objective : callable
        ``objective(config: dict, budget: float) -> {"loss": float, "info": dict}``, e.g.
        :class:`DeepFreakObjective` with the search's settings.
    nameserver, nameserver_port : str, int
        Where the search's nameserver listens (:func:`run_bohb` prints and records it).
    run_id : str
        The search's ``run_id``.
    host : str
        This machine's address as the search's machine reaches it.
    """
    _configure_pyro()
    _quiet()
    _make_worker(objective, run_id, nameserver, nameserver_port, host,
                 worker_id or f"{os.uname().nodename}-{os.getpid()}").run(background=False)


# ---------------------------------------------------------------------------------------------------------
# The result log: hpbandster's format, appended across resumed runs
# ---------------------------------------------------------------------------------------------------------

def _read_lines(path: Path) -> list:
    """JSON lines of a log file; a line cut short by a kill is dropped."""
    if not path.exists():
        return []
    lines = []
    for text in path.read_text().splitlines():
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            continue
    return lines


def read_log(directory) -> list:
    """Every evaluation in a search's log, oldest first.

    Returns
    -------
    list of dict
        ``config_id`` (iteration, bracket stage 0, index), ``config``, ``model_based`` (picked by BOHB's
        model or at random), ``budget`` (epochs), ``loss``, ``val_accuracy`` (NaN for a failure), ``info``,
        ``exception`` (traceback text or None), ``started`` and ``finished`` (seconds since the epoch).
    """
    directory = Path(directory)
    configs = {tuple(c[0]): c for c in _read_lines(directory / "configs.json")}
    runs = []
    for config_id, budget, stamps, result, exception in _read_lines(directory / "results.json"):
        line = configs.get(tuple(config_id))
        if line is None:
            continue
        info = (result or {}).get("info") or {}
        loss = (result or {}).get("loss")
        runs.append({"config_id": tuple(config_id), "config": line[1],
                     "model_based": bool((line[2] if len(line) > 2 else {}).get("model_based_pick", False)),
                     "budget": float(budget), "loss": loss if loss is not None else math.inf,
                     "val_accuracy": info.get("val_accuracy", math.nan), "info": info, "exception": exception,
                     "started": stamps.get("started"), "finished": stamps.get("finished")})
    return runs


def _logger_class():
    import hpbandster.core.result as hpres

    class _AppendingLogger(hpres.json_result_logger):
        """hpbandster's JSON result logger, appending to an existing log with iteration numbers shifted past
        it (a resumed search numbers its iterations from 0 again)."""

        def __init__(self, directory, offset: int):
            directory = Path(directory)
            directory.mkdir(parents=True, exist_ok=True)
            self.config_fn, self.results_fn = (str(directory / name) for name in LOG_FILES)
            for name in LOG_FILES:
                (directory / name).touch()
            self.config_ids, self.offset = set(), offset

        def _write(self, path, line):
            with open(path, "a") as fh:
                fh.write(json.dumps(_plain(line)) + "\n")
                fh.flush()
                os.fsync(fh.fileno())

        def _shift(self, config_id):
            return [config_id[0] + self.offset, *config_id[1:]]

        def new_config(self, config_id, config, config_info):
            if config_id not in self.config_ids:
                self.config_ids.add(config_id)
                self._write(self.config_fn, [self._shift(config_id), config, config_info])

        def __call__(self, job):
            if job.id not in self.config_ids:
                self.new_config(job.id, job.kwargs["config"], {})
            self._write(self.results_fn, [self._shift(job.id), job.kwargs["budget"], job.timestamps, job.result,
                                          job.exception])

    return _AppendingLogger


def _warm_start(runs: list, directory: Path):
    """hpbandster's ``previous_result`` from the successful runs of a log (failures would break its import)."""
    import hpbandster.core.result as hpres

    ok = [r for r in runs if r["exception"] is None and math.isfinite(r["loss"])]
    if not ok:
        return None
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    ids = sorted({r["config_id"] for r in ok})
    configs = {r["config_id"]: r["config"] for r in ok}
    with open(directory / "configs.json", "w") as fh:
        for i in ids:
            fh.write(json.dumps([list(i), configs[i], {}]) + "\n")
    with open(directory / "results.json", "w") as fh:
        for r in ok:
            fh.write(json.dumps([list(r["config_id"]), r["budget"],
                                 {"submitted": r["started"], "started": r["started"], "finished": r["finished"]},
                                 {"loss": r["loss"], "info": _plain(r["info"])}, None]) + "\n")
    return hpres.logged_results_to_HBS_result(str(directory))


def completed_iterations(runs: list, max_budget: float) -> int:
    """Hyperband iterations of a log that reached their largest budget (every bracket ends at max_budget)."""
    return len({r["config_id"][0] for r in runs if r["budget"] >= max_budget * (1 - 1e-9)})


# ---------------------------------------------------------------------------------------------------------
# The search
# ---------------------------------------------------------------------------------------------------------

def _optimizer_class():
    from hpbandster.optimizers import BOHB

    class _StoppableBOHB(BOHB):
        """BOHB whose run loop can be stopped from another thread (timeout, all workers dead)."""

        stopped = False

        def stop(self):
            with self.thread_cond:
                self.stopped = True
                self.thread_cond.notify_all()

        def wait_for_workers(self, min_n_workers=1):
            with self.thread_cond:
                while self.dispatcher.number_of_workers() < min_n_workers and not self.stopped:
                    self.thread_cond.wait(1)

        def _queue_wait(self):
            if self.num_running_jobs >= self.job_queue_sizes[1]:
                while self.num_running_jobs > self.job_queue_sizes[0] and not self.stopped:
                    self.thread_cond.wait()

        def active_iterations(self):
            return [] if self.stopped else super().active_iterations()

    return _StoppableBOHB


@dataclass
class BohbResult:
    """What :func:`run_bohb` returns (and writes to ``out/summary.json``).

    Attributes
    ----------
    runs : list of dict
        Every evaluation of the search so far, resumed runs included (see :func:`read_log`).
    incumbent : dict or None
        The configuration with the lowest loss at the largest budget it was evaluated at.
    incumbent_val_accuracy : float
    budgets : list of float, epochs
    failures : list of dict
        The runs that raised: ``config_id``, ``budget`` and the traceback's last line.
    stopped : str or None
        Why the search stopped early: ``"timeout"``, ``"workers died"``, or None.
    seconds : float
        Wall time of this call.
    seconds_all_calls : float
        Wall time of every call that finished on this search's log, this one included (a resumed search
        adds up; a call that found nothing left to do adds almost nothing).
    nameserver : (str, int)
    out : pathlib.Path
    """

    runs: list
    incumbent: dict | None
    incumbent_val_accuracy: float
    budgets: list
    failures: list
    stopped: str | None
    seconds: float
    seconds_all_calls: float
    nameserver: tuple
    out: Path

    def best(self, k: int = 3) -> list:
        """The ``k`` best successful runs at the largest budget any reached, best first."""
        ok = [r for r in self.runs if math.isfinite(r["loss"])]
        top = max((r["budget"] for r in ok), default=None)
        return sorted((r for r in ok if r["budget"] == top), key=lambda r: r["loss"])[:k]


def best_by_budget(runs: list, k: int = 3) -> dict:
    """Mean, standard deviation and range of the ``k`` best validation accuracies at each budget.

    Returns
    -------
    dict
        budget (epochs) → ``{"n", "mean", "std", "min", "max"}`` over the (at most) ``k`` best successful
        evaluations at that budget; DeepFreak's Figure 3 shows the same for its search.
    """
    out = {}
    for b in sorted({r["budget"] for r in runs}):
        acc = sorted((r["val_accuracy"] for r in runs if r["budget"] == b and math.isfinite(r["loss"])
                      and math.isfinite(r["val_accuracy"])), reverse=True)[:k]
        if acc:
            out[b] = {"n": len(acc), "mean": float(np.mean(acc)), "std": float(np.std(acc)),
                      "min": float(min(acc)), "max": float(max(acc))}
    return out


def format_budgets(runs: list, budgets=None, k: int = 3) -> str:
    """A Markdown table of a search by budget: evaluations, then mean, spread (standard deviation) and maximum
    of the ``k`` best validation accuracies (:func:`best_by_budget`; DeepFreak's Figure 3 in numbers).

    Parameters
    ----------
    runs : list of dict
        :func:`read_log` or :attr:`BohbResult.runs`.
    budgets : list of float, epochs, optional
        Rows (default: every budget in ``runs``); a budget no evaluation succeeded at shows dashes.
    k : int
    """
    best = best_by_budget(runs, k=k)
    lines = [f"| budget (epochs) | evaluations | best {k}: mean (%) | spread (std, %) | best (%) |",
             "|---|---|---|---|---|"]
    for b in sorted(budgets if budgets is not None else {r["budget"] for r in runs}):
        n = sum(r["budget"] == b for r in runs)
        s = best.get(b)
        cells = (f"{100 * s['mean']:.1f} | {100 * s['std']:.1f} | {100 * s['max']:.1f}" if s else "— | — | —")
        lines.append(f"| {b:g} | {n} | {cells} |")
    return "\n".join(lines)


def describe_config(config: dict) -> str:
    """One configuration in words, topology numbered as in the paper's Table 8 (1–13)."""
    t = int(config["topology"])
    return (f"topology {t + 1} ({TOPOLOGIES[t].describe()}), learning rate {float(config['learning_rate']):.3g}, "
            f"momentum {float(config['momentum']):.3f}, weight decay {float(config['weight_decay']):.2e}, "
            f"batch size {int(config['batch_size'])}")


def count_outcomes(runs: list) -> dict:
    """How many evaluations diverged, could not train at the input size, or failed (raised)."""
    return {"diverged": sum("diverged" in r["info"] for r in runs),
            "infeasible": sum("infeasible" in r["info"] for r in runs),
            "failed": sum(r["exception"] is not None for r in runs)}


def incumbent(runs: list):
    """The best run at the largest budget any successful run reached (BOHB's incumbent), or None."""
    ok = [r for r in runs if math.isfinite(r["loss"])]
    if not ok:
        return None
    top = max(r["budget"] for r in ok)
    return min((r for r in ok if r["budget"] == top), key=lambda r: r["loss"])


def run_bohb(data, out, *, n_iterations: int = 4, min_budget: float = 1, max_budget: float = 9, eta: float = 3,
             n_workers: int = 1, binning: int = 4, bin_mode: str = "mean", max_train: int | None = None,
             max_val: int | None = None, seed: int = 0, threads: int | None = None, space: dict | None = None,
             timeout: float | None = None, resume: bool = True, objective=None, run_id: str = "deepfreak",
             host: str = "127.0.0.1", port: int = 0, min_n_workers: int | None = None, keep_checkpoints: bool = False,
             command: str = "", verbose: bool = True) -> BohbResult:
    """Search DeepFreak's topology and hyperparameters with BOHB (hpbandster), start to finish.

    Parameters
    ----------
    data : str or os.PathLike
        The data set (training split to train, validation split to score).
    out : str or os.PathLike
        Directory of the search: hpbandster's log (``configs.json``, ``results.json``), the evaluations'
        checkpoints (``evals/``, removed at the end unless ``keep_checkpoints``), ``summary.json`` (the
        incumbent, failures, this call's wall time and that of every call that finished on this log, the
        span of the evaluations' time stamps, the objective's settings and the arguments of the last call
        that ran evaluations: command, space, iterations, budgets, workers, timeout). With ``resume=False``
        the log and the summary are moved aside together.
    n_iterations : int
        Hyperband iterations (brackets) in all, resumed ones included.
    min_budget, max_budget : float, epochs
    eta : float
        Successive halving keeps 1/eta of the configurations at each budget, ×eta the epochs.
    n_workers : int
        Local worker processes (0: only workers that join with :func:`run_worker`, from this machine or,
        with ``host`` set, from others; the search waits for them up to ``timeout``).
    binning, bin_mode, max_train, max_val, seed, threads
        Of :class:`DeepFreakObjective` (threads: torch threads per worker; default cores / n_workers). The
        binning and its mode are fixed settings of the search, the same for every configuration.
    space : dict, optional
        Overrides of :data:`SEARCH_SPACE`.
    timeout : float, s, optional
        Stop the search after this long; running evaluations are abandoned (their log lines missing).
    resume : bool
        Warm-start from ``out``'s log if it has one (False: move it aside to ``out/previous-<time>/``).
    objective : callable, optional
        ``objective(config, budget) -> {"loss", "info"}``, picklable (default :class:`DeepFreakObjective`).
    run_id : str
    host, port : str, int
        Where the nameserver listens: 127.0.0.1 and a free port by default. Another host (an address of
        this machine that other machines reach) opens the search to remote workers (:func:`run_worker`).
    min_n_workers : int, optional
        Workers to wait for before starting (default ``max(n_workers, 1)``).
    keep_checkpoints : bool
    command : str
        The command line that started the search, recorded in ``summary.json``.
    verbose : bool
        Print the nameserver's address and one line per finished evaluation.

    Returns
    -------
    BohbResult
    """
    _configure_pyro()
    _quiet()
    import hpbandster.core.nameserver as hpns

    t0 = time.perf_counter()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if n_workers < 0:
        raise ValueError(f"n_workers = {n_workers}: must be ≥ 0 (0: only workers started with run_worker)")
    if objective is None:
        objective = DeepFreakObjective(str(Path(data).resolve()), str(out / "evals"), binning=binning,
                                       bin_mode=bin_mode, max_train=max_train, max_val=max_val, seed=seed,
                                       threads=threads or max(1, (os.cpu_count() or 1) // max(n_workers, 1)))
    steps = budgets(min_budget, max_budget, eta)
    if not resume and any((out / name).exists() for name in LOG_FILES):
        aside = out / f"previous-{time.strftime('%Y%m%d-%H%M%S')}"
        aside.mkdir()
        for name in (*LOG_FILES, "summary.json"):
            if (out / name).exists():
                os.replace(out / name, aside / name)
    previous_runs = read_log(out)
    earlier = json.loads((out / "summary.json").read_text()) if previous_runs and (out / "summary.json").exists() \
        else {}
    # wall time of the calls that finished on this log so far (a resumed search adds up); a summary written
    # before this was recorded holds only its own call's, so the log's time stamps bound it from below
    earlier_seconds = earlier.get("seconds_all_calls", max(earlier.get("seconds", 0.0),
                                                           evaluation_span(previous_runs) or 0.0))
    search = {"command": command, "space": {**SEARCH_SPACE, **(space or {})},
              "n_iterations": n_iterations, "min_budget": min_budget, "max_budget": max_budget, "eta": eta,
              "n_workers": n_workers, "timeout": timeout}
    done = completed_iterations(previous_runs, max_budget)
    offset = 1 + max((r["config_id"][0] for r in previous_runs), default=-1)
    remaining = max(0, n_iterations - done)
    numpy_state = np.random.get_state()
    np.random.seed(seed + offset)  # BOHB's model-based sampling draws from NumPy's global generator
    stopped = None
    ns_address = (host, port)
    if remaining == 0 and earlier.get("search"):
        search = earlier["search"]  # nothing runs: the arguments of the search that ran stay on record
    if remaining > 0:
        if verbose and previous_runs:
            print(f"resuming: {len(previous_runs)} evaluations in the log, {done} of {n_iterations} iterations "
                  f"complete, {remaining} to run")
        previous = _warm_start(previous_runs, out / ".warmstart")
        nameserver = hpns.NameServer(run_id=run_id, host=host, port=port)  # no credentials pickle
        ns_host, ns_port = nameserver.start()
        ns_address = (ns_host, int(ns_port))
        (out / "nameserver.json").write_text(json.dumps({"host": ns_host, "port": int(ns_port), "run_id": run_id}))
        if verbose:
            print(f"nameserver {ns_host}:{ns_port} (run id {run_id!r}), {n_workers} local worker(s)")
        procs, optimizer = [], None
        try:
            ctx = mp.get_context("spawn")
            for k in range(n_workers):
                p = ctx.Process(target=_worker_process, name=f"bohb-worker-{k}", daemon=True,
                                args=(objective, run_id, ns_host, ns_port, "127.0.0.1", f"local-{k}",
                                      getattr(objective, "threads", None)))
                p.start()
                procs.append(p)
            logger = _logger_class()(out, offset)
            if verbose:
                logger = _Echo(logger, offset)
            optimizer = _optimizer_class()(configspace=config_space(seed + offset, space), run_id=run_id,
                                           host=host, nameserver=ns_host, nameserver_port=int(ns_port),
                                           min_budget=min_budget, max_budget=max_budget, eta=eta,
                                           result_logger=logger, previous_result=previous, ping_interval=2)
            watch = _Watchdog(optimizer, procs, timeout)
            watch.start()
            try:
                optimizer.run(n_iterations=remaining, min_n_workers=min_n_workers or max(n_workers, 1))
            finally:
                watch.finish()
            stopped = watch.reason
        finally:
            if optimizer is not None:
                optimizer.shutdown(shutdown_workers=True)
            nameserver.shutdown()
            grace = time.monotonic() + 5  # idle workers exit on the shutdown call at once
            for p in procs:
                p.join(timeout=max(0.0, grace - time.monotonic()))
            for p in procs:
                if p.is_alive():
                    p.terminate()  # an evaluation still running after a timeout: our own process, by its handle
                    p.join(timeout=10)
            shutil.rmtree(out / ".warmstart", ignore_errors=True)
    np.random.set_state(numpy_state)
    runs = read_log(out)
    if not keep_checkpoints and stopped is None:
        shutil.rmtree(out / "evals", ignore_errors=True)
    return _summarise(runs, steps, stopped, time.perf_counter() - t0, ns_address, out, objective, verbose,
                      search=search, earlier_seconds=earlier_seconds)


class _Echo:
    """Wraps the result logger to print one line per finished evaluation."""

    def __init__(self, logger, offset):
        self.logger, self.offset = logger, offset

    def new_config(self, *args):
        self.logger.new_config(*args)

    def __call__(self, job):
        self.logger(job)
        it, stage, k = job.id
        where = f"({it + self.offset}, {stage}, {k}) {job.kwargs['budget']:g} epochs"
        if job.result is None:
            tail = (job.exception or "").strip().splitlines()[-1:] or ["?"]
            print(f"{where}: FAILED: {tail[0]}", flush=True)
        else:
            print(f"{where}: val accuracy {job.result['info'].get('val_accuracy', math.nan):.4f}", flush=True)


class _Watchdog(threading.Thread):
    """Stops the search at the timeout, or when every local worker process has died."""

    def __init__(self, optimizer, procs, timeout):
        super().__init__(daemon=True, name="bohb-watchdog")
        self.optimizer, self.procs, self.timeout = optimizer, procs, timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.reason = None
        self.done = threading.Event()

    def run(self):
        while not self.done.wait(0.5):
            if self.deadline is not None and time.monotonic() > self.deadline:
                self.reason = "timeout"
            elif self.procs and not any(p.is_alive() for p in self.procs):
                self.reason = "workers died"
            if self.reason:
                self.optimizer.stop()
                return

    def finish(self):
        self.done.set()
        self.join()


def evaluation_span(runs) -> float | None:
    """Seconds from the first evaluation's start to the last one's end, from the log's time stamps."""
    started = [r["started"] for r in runs if r["started"] is not None]
    finished = [r["finished"] for r in runs if r["finished"] is not None]
    return float(max(finished) - min(started)) if started and finished else None


def _summarise(runs, steps, stopped, seconds, nameserver, out, objective, verbose, *, search=None,
               earlier_seconds: float = 0.0) -> BohbResult:
    settings = objective.settings() if hasattr(objective, "settings") else None
    failures = []
    for r in runs:
        foreign = settings is not None and r["info"].get("settings", settings) != settings
        if foreign:
            r["exception"] = f"computed with other settings {r['info']['settings']}, the search uses {settings}"
            r["loss"] = math.inf
        if r["exception"] is not None:
            failures.append({"config_id": r["config_id"], "budget": r["budget"],
                             "error": r["exception"].strip().splitlines()[-1]})
    best = incumbent(runs)
    result = BohbResult(runs=runs, incumbent=best["config"] if best else None,
                        incumbent_val_accuracy=best["val_accuracy"] if best else math.nan, budgets=steps,
                        failures=failures, stopped=stopped, seconds=seconds,
                        seconds_all_calls=earlier_seconds + seconds, nameserver=nameserver, out=out)
    summary = {"incumbent": result.incumbent, "incumbent_val_accuracy": result.incumbent_val_accuracy,
               "budgets": steps, "n_runs": len(runs), "failures": failures, "stopped": stopped,
               "seconds": seconds, "seconds_all_calls": result.seconds_all_calls,
               "evaluation_span_seconds": evaluation_span(runs), "settings": settings, "search": search}
    (out / "summary.json").write_text(json.dumps(_plain(summary), indent=1))
    failed = (f"{len(failures)} of {len(runs)} BOHB evaluations failed; first: {failures[0]['error']}"
              if failures else "")
    if best is None:
        why = ([f"BOHB stopped ({stopped}) before any evaluation succeeded"] if stopped else []) + (
            [failed] if failed else [])
        raise RuntimeError("; ".join(why or ["no evaluation ran"]) + f" (log and tracebacks in {out})")
    if failed:
        warnings.warn(failed, RuntimeWarning, stacklevel=3)
    if verbose:
        print(f"{len(runs)} evaluations; best at {best['budget']:g} epochs: {result.incumbent} "
              f"(val accuracy {result.incumbent_val_accuracy:.4f})")
    return result
