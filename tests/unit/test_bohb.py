"""BOHB: the search space, the nameserver's lifetime, resuming from the log, failures, dead workers, timeouts.

Most searches here use toy objectives (a few milliseconds an evaluation) in real worker processes, so what
is tested is the machinery: hpbandster, Pyro, the processes and the log. One search trains DeepFreak itself,
on 64 × 64 frames.
"""

import json
import math
import multiprocessing as mp
import os
import socket
import time

import pytest

pytest.importorskip("hpbandster")

from diffranb import bohb, cli, dataset, deepfreak, tune, viz  # noqa: E402


class Quadratic:
    """Loss falls with the budget and is lowest at learning rate 0.01; optionally fails, sleeps or dies."""

    def __init__(self, fail_from_budget=math.inf, sleep=0.0, die=False):
        self.fail_from_budget, self.sleep, self.die = fail_from_budget, sleep, die

    def settings(self):
        return {"toy": True}

    def __call__(self, config, budget):
        if self.die:
            os._exit(3)
        time.sleep(self.sleep)
        if budget >= self.fail_from_budget:
            raise ArithmeticError(f"refusing budget {budget}")
        loss = (math.log10(config["learning_rate"]) + 2) ** 2 / 20 + 0.1 / budget
        return {"loss": loss, "info": {"val_accuracy": 1 - loss, "settings": self.settings()}}


def port_is_closed(host, port):
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) != 0


SMALL = dict(min_budget=1, max_budget=9, eta=3, verbose=False)


def test_the_search_space_is_the_papers_table_9():
    cs = bohb.config_space()
    hp = {h.name: h for h in cs.values()}
    assert sorted(hp) == ["batch_size", "learning_rate", "momentum", "topology", "weight_decay"]
    assert list(hp["topology"].choices) == list(range(13))
    assert (hp["learning_rate"].lower, hp["learning_rate"].upper, hp["learning_rate"].log) == (1e-4, 10.0, True)
    assert (hp["momentum"].lower, hp["momentum"].upper) == (0.5, 1.0)
    assert (hp["weight_decay"].lower, hp["weight_decay"].upper) == (1e-5, 5e-5)
    assert list(hp["batch_size"].choices) == [1, 2, 4, 8, 16, 32, 64]
    assert bohb.budgets(1, 27, 3) == [1, 3, 9, 27]
    with pytest.raises(ValueError, match="unknown"):
        bohb.config_space(space={"dropout": (0, 1)})


def test_a_search_runs_on_loopback_stops_its_nameserver_and_resumes_from_its_log(tmp_path, capsys):
    out = tmp_path / "search"
    first = bohb.run_bohb(None, out, n_iterations=1, objective=Quadratic(), n_workers=1, **SMALL)
    host, port = first.nameserver
    assert host == "127.0.0.1" and port > 0
    assert json.loads((out / "nameserver.json").read_text())["port"] == port
    assert port_is_closed(host, port)
    assert not mp.active_children()
    # one Hyperband iteration at eta 3 from 1 to 9 epochs: 9 configurations at 1, 3 at 3, 1 at 9
    assert sorted(r["budget"] for r in first.runs) == [1.0] * 9 + [3.0] * 3 + [9.0]
    assert first.incumbent is not None and not first.failures
    log = {name: (out / name).read_text() for name in bohb.LOG_FILES}

    second = bohb.run_bohb(None, out, n_iterations=2, objective=Quadratic(), n_workers=2, command="second", **SMALL)
    assert port_is_closed(*second.nameserver)
    for name in bohb.LOG_FILES:  # the first search's lines are kept, the new ones appended
        assert (out / name).read_text().startswith(log[name])
    iterations = {r["config_id"][0] for r in second.runs}
    assert iterations == {0, 1}
    assert len({(r["config_id"], r["budget"]) for r in second.runs}) == len(second.runs)
    assert any(r["model_based"] for r in second.runs if r["config_id"][0] == 1)  # warm-started model
    assert second.incumbent_val_accuracy >= first.incumbent_val_accuracy
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_runs"] == len(second.runs)
    assert summary["search"]["n_iterations"] == 2 and summary["search"]["n_workers"] == 2
    assert summary["search"]["space"]["learning_rate"] == [1e-4, 10.0]
    assert summary["seconds_all_calls"] == pytest.approx(first.seconds + second.seconds, rel=1e-6)
    assert 0 < summary["evaluation_span_seconds"] < summary["seconds_all_calls"]

    again = bohb.run_bohb(None, out, n_iterations=2, objective=Quadratic(), **SMALL)
    assert len(again.runs) == len(second.runs)  # nothing left to do: no nameserver, no evaluation
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seconds_all_calls"] == pytest.approx(first.seconds + second.seconds + again.seconds, rel=1e-6)
    assert again.seconds_all_calls == summary["seconds_all_calls"] and again.seconds < 0.1 * again.seconds_all_calls
    assert summary["search"]["command"] == "second"  # a call that ran nothing keeps the arguments on record

    fresh = bohb.run_bohb(None, out, n_iterations=1, objective=Quadratic(), resume=False, **SMALL)
    (aside,) = out.glob("previous-*")
    assert {p.name for p in aside.iterdir()} == {*bohb.LOG_FILES, "summary.json"}
    assert json.loads((out / "summary.json").read_text())["seconds_all_calls"] == pytest.approx(fresh.seconds)


def test_the_search_by_budget_in_numbers_and_words():
    def run(i, budget, acc, **info):
        return {"config_id": (0, 0, i), "config": {}, "budget": budget, "loss": 1 - acc if acc == acc else math.inf,
                "val_accuracy": acc, "info": info, "exception": "boom" if acc != acc else None}

    runs = [run(0, 1.0, 0.5), run(1, 1.0, 0.7), run(2, 1.0, 0.6), run(3, 1.0, 0.1), run(4, 1.0, 0.0, diverged="x"),
            run(5, 1.0, math.nan), run(1, 3.0, 0.8)]
    table = bohb.format_budgets(runs, [1.0, 3.0, 9.0]).splitlines()
    assert table[0].startswith("| budget (epochs) | evaluations | best 3: mean (%)")
    # budget 1: six evaluations; the best three of the five that succeeded are 0.7, 0.6, 0.5
    assert table[2] == "| 1 | 6 | 60.0 | 8.2 | 70.0 |"
    assert table[3] == "| 3 | 1 | 80.0 | 0.0 | 80.0 |" and table[4] == "| 9 | 0 | — | — | — |"
    assert bohb.count_outcomes(runs) == {"diverged": 1, "infeasible": 0, "failed": 1}
    words = bohb.describe_config({"topology": 7, "learning_rate": 0.0123, "momentum": 0.9, "weight_decay": 2e-5,
                                  "batch_size": 2})
    assert words.startswith("topology 8 (64 filters") and "learning rate 0.0123" in words
    assert words.endswith("batch size 2")


def test_a_raising_objective_is_reported_not_a_hang(tmp_path):
    with pytest.warns(RuntimeWarning, match="failed.*refusing budget"):
        result = bohb.run_bohb(None, tmp_path / "partly", n_iterations=1, objective=Quadratic(fail_from_budget=3),
                               timeout=120, **SMALL)
    # the 3 configurations promoted to 3 epochs fail; Hyperband still promotes one of them to 9
    assert len(result.failures) == 4 and sorted(f["budget"] for f in result.failures) == [3.0, 3.0, 3.0, 9.0]
    assert "ArithmeticError" in result.failures[0]["error"]
    assert {r["budget"] for r in result.runs if r["exception"] is None} == {1.0}
    with pytest.raises(RuntimeError, match="failed.*refusing budget 1"):
        bohb.run_bohb(None, tmp_path / "all", n_iterations=1, objective=Quadratic(fail_from_budget=0),
                      timeout=120, **SMALL)


def test_dead_workers_and_the_timeout_stop_the_search(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="workers died"):
        bohb.run_bohb(None, tmp_path / "dead", n_iterations=1, objective=Quadratic(die=True), timeout=120, **SMALL)
    with pytest.raises(RuntimeError, match="timeout"):
        bohb.run_bohb(None, tmp_path / "slow", n_iterations=1, objective=Quadratic(sleep=60), timeout=3, **SMALL)
    assert time.perf_counter() - t0 < 60
    assert not mp.active_children()


def test_a_log_line_cut_by_a_kill_is_ignored(tmp_path):
    (tmp_path / "configs.json").write_text(json.dumps([[0, 0, 0], {"learning_rate": 0.01}, {}]) + "\n")
    (tmp_path / "results.json").write_text(
        json.dumps([[0, 0, 0], 1.0, {"started": 1.0, "finished": 2.0}, {"loss": 0.5, "info": {}}, None])
        + "\n[[0, 0, 1], 1.0, {\"star")
    runs = bohb.read_log(tmp_path)
    assert len(runs) == 1 and runs[0]["loss"] == 0.5
    assert bohb.completed_iterations(runs, max_budget=1.0) == 1


def test_tune_bohb_trains_deepfreak_and_train_takes_its_incumbent(tmp_path, capsys):
    data = dataset.build(90, 5, tmp_path / "tiny.h5", pixels=64, workers=0, progress=False)
    out = tmp_path / "bohb"
    args = ["tune", "bohb", "--data", str(data), "--out", str(out), "--iterations", "1", "--min-budget", "1",
            "--max-budget", "3", "--topologies", "8,9,12", "--binning", "1", "--max-train", "16", "--max-val", "9",
            "--threads", "1", "--keep-checkpoints"]
    assert cli.main(args) == 0
    runs = bohb.read_log(out)
    assert sorted(r["budget"] for r in runs) == [1.0, 1.0, 1.0, 3.0]
    assert all(r["exception"] is None and 0 <= r["val_accuracy"] <= 1 for r in runs)
    promoted = [r for r in runs if r["budget"] == 3.0][0]
    if "diverged" not in promoted["info"]:  # a learning rate near 10 may diverge: loss 1, not a failure
        assert promoted["info"]["epochs_computed"] == 2  # continued from its 1-epoch checkpoint
    assert len(list((out / "evals").iterdir())) == 3
    assert "4 evaluations" in capsys.readouterr().out
    search = json.loads((out / "summary.json").read_text())["search"]
    assert search["command"].startswith("diffranb tune bohb") and search["space"]["topology"] == [8, 9, 12]

    model = tmp_path / "model"
    assert cli.main(["train", "deepfreak", "--data", str(data), "--out", str(model), "--bohb", str(out),
                     "--epochs", "1", "--binning", "1", "--max-train", "16", "--threads", "1", "--no-progress"]) == 0
    meta = json.loads((model / "model.json").read_text())
    incumbent = json.loads((out / "summary.json").read_text())["incumbent"]
    assert {k: meta["train_config"][k] for k in incumbent} == incumbent

    # the record of the chosen configuration's training names the search that chose it
    record = deepfreak.report(model, data, tmp_path / "record", bohb_dir=out, command="diffranb train …")
    assert deepfreak.load_report(tmp_path / "record") == record
    text = deepfreak.describe_report(record)
    assert "chosen by BOHB: 4 evaluations" in text and "budgets 1, 3 epochs" in text
    assert "DeepFreak accuracy" in text and (tmp_path / "record" / "bohb.png").is_file()
    fig = viz.plot_training_record(record, runs=runs)
    assert len(fig.axes) == 5  # loss, accuracy, confusion and its colour bar, search


def test_the_bin_mode_is_a_fixed_setting_of_the_search_not_a_hyperparameter():
    assert "bin_mode" not in bohb.SEARCH_SPACE
    config = {"topology": 8, "learning_rate": 0.01, "momentum": 0.9, "weight_decay": 1e-5, "batch_size": 8}
    mean = bohb.DeepFreakObjective("set.h5", "evals", binning=4)
    top = bohb.DeepFreakObjective("set.h5", "evals", binning=4, bin_mode="max")
    assert mean.train_config(config, 3.0).bin_mode == "mean" and top.train_config(config, 3.0).bin_mode == "max"
    # logs from before the option (no bin_mode in their settings) still agree with a mean-binned search
    assert "bin_mode" not in mean.settings() and top.settings()["bin_mode"] == "max"
    with pytest.raises(ValueError, match="bin_mode = 'median'"):
        bohb.DeepFreakObjective("set.h5", "evals", bin_mode="median")


def test_the_command_line_passes_the_bin_mode_to_the_search_and_from_it(tmp_path, monkeypatch):
    from diffranb import deepfreak

    seen = {}

    def fake_run_bohb(data, out, **kwargs):
        seen.update(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(tune, "run_bohb", fake_run_bohb)
    assert cli.main(["tune", "bohb", "--data", "set.h5", "--out", str(tmp_path), "--bin-mode", "max"]) == 2
    assert seen["bin_mode"] == "max" and seen["binning"] == 4
    worker = cli.build_parser().parse_args(["tune", "bohb-worker", "--nameserver", "h:1", "--host", "h",
                                            "--data", "d", "--workdir", "w", "--bin-mode", "max"])
    assert worker.bin_mode == "max"

    configs = []

    def fake_train(data, out, config, **kwargs):
        configs.append(config)
        raise ValueError("stop here")

    monkeypatch.setattr(deepfreak, "train", fake_train)
    search = tmp_path / "search"
    search.mkdir()
    incumbent = {"topology": 8, "learning_rate": 0.01, "momentum": 0.9, "weight_decay": 1e-5, "batch_size": 8}
    (search / "summary.json").write_text(json.dumps({"incumbent": incumbent, "settings": {
        "binning": 4, "bin_mode": "max", "max_train": None, "max_val": None, "seed": 0}}))
    base = ["train", "deepfreak", "--data", "set.h5", "--out", str(tmp_path / "m"), "--bohb", str(search)]
    assert cli.main(base) == 2 and cli.main(base + ["--bin-mode", "mean"]) == 2
    assert [c.bin_mode for c in configs] == ["max", "mean"]  # the search's mode unless told otherwise


def test_tune_run_bohb_is_this_search():
    assert tune.run_bohb.__doc__ and "diffranb.bohb.run_bohb" in tune.run_bohb.__doc__


def test_a_worker_reads_its_frames_once_across_evaluations(tmp_path):
    import torch
    from safetensors.torch import load_file

    from diffranb import deepfreak

    data = dataset.build(60, 4, tmp_path / "tiny.h5", pixels=64, workers=0, progress=False)
    objective = bohb.DeepFreakObjective(str(data), str(tmp_path / "evals"), binning=2, bin_mode="max",
                                        max_train=16, max_val=8, threads=1)
    configs = [{"topology": 8, "learning_rate": 0.02, "momentum": 0.9, "weight_decay": 1e-5, "batch_size": 8},
               {"topology": 9, "learning_rate": 0.002, "momentum": 0.5, "weight_decay": 2e-5, "batch_size": 8}]
    first = objective(configs[0], 1.0)
    ds, frames = bohb._frame_store(objective)
    n = len(deepfreak.subset(ds, "train", 16, 0)) + len(deepfreak.subset(ds, "val", 8, 0))
    assert frames.enabled and n > 16 and frames.reads == n  # each training and validation frame once
    second = objective(configs[1], 2.0)
    assert bohb._frame_store(objective)[1] is frames and frames.reads == n  # nothing read again
    assert 0 <= first["info"]["val_accuracy"] <= 1 and len(second["info"]["history"]) == 2
    # the same evaluation trained from the file alone gives the same weights
    cfg = objective.train_config(configs[1], 2.0)
    alone = deepfreak.train(data, tmp_path / "alone", cfg, save_best=False, progress=False, threads=1,
                            frame_store_mib=0)
    assert [e["val_loss"] for e in alone.history] == [e["val_loss"] for e in second["info"]["history"]]
    evals = [p for p in (tmp_path / "evals").iterdir() if (p / "checkpoint" / "weights.2.safetensors").exists()]
    a = load_file(evals[0] / "checkpoint" / "weights.2.safetensors")
    b = load_file(tmp_path / "alone" / "checkpoint" / "weights.2.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the file written again (here: touched) is another set: a new store, and the old file is closed
    st = os.stat(data)
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    ds2, frames2 = bohb._frame_store(objective)
    assert frames2 is not frames and frames2.reads == 0 and len(bohb._FRAME_STORES) == 1
    assert not ds._file.id.valid
    ds = ds2
    # a store of another binning is refused by train
    with pytest.raises(ValueError, match="binned 2 × 2 by max"):
        deepfreak.train(ds, tmp_path / "other", deepfreak.TrainConfig(topology=8, binning=1, max_train=16,
                                                                      max_val=8, epochs=1), frames=frames2)
