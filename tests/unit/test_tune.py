"""The Hyperopt search: its space, persistence after every trial, exact resumption, and time limits."""

import json

import numpy as np
import pytest

from diffranb import classic, dataset, features, tune, viz


def test_every_point_of_the_space_is_a_valid_config():
    from hyperopt.pyll.stochastic import sample

    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        config = tune.config_from_sample(sample(tune.space(), rng=rng), seed=4)
        assert config.seed == 4
        seen.add(config.label())
    assert seen == {f"{c}+{e}" for c in ("RF", "SVM") for e in ("GLCM", "LBP", "SIFT")}


def test_the_space_can_hold_the_spot_statistics_alone_or_beside_the_papers():
    from hyperopt.pyll.stochastic import sample

    rng = np.random.default_rng(1)
    configs = [tune.config_from_sample(sample(tune.space(("spots",)), rng=rng)) for _ in range(600)]
    assert {c.label() for c in configs} == {"RF+SPOTS", "SVM+SPOTS"}
    # one background, or any set of them side by side: all 31 of the five backgrounds
    windows = {c.window if isinstance(c.window, tuple) else (c.window,) for c in configs}
    assert windows == set(tune.SPOT_WINDOW_CHOICES) and len(windows) == 31
    # only the backgrounds offered
    configs = [tune.config_from_sample(sample(tune.space(("spots",), (9, "5x2")), rng=rng)) for _ in range(60)]
    assert {c.window for c in configs} == {9, "5x2", (9, "5x2")}
    seen = {tune.config_from_sample(sample(tune.space(features.KINDS), rng=rng)).extractor for _ in range(200)}
    assert seen == set(features.KINDS)
    for bad in ((), ("glcm", "glcm"), ("hog",)):
        with pytest.raises(ValueError, match="extractors"):
            tune.space(bad)


def test_glcm_subsets_are_all_non_empty_subsets():
    assert len(tune._subsets(features.GLCM_DISTANCES)) == 2**5 - 1
    assert len(tune._subsets(features.GLCM_ANGLES)) == 2**4 - 1
    assert () not in tune._subsets(features.GLCM_ANGLES)


def test_interrupted_search_resumes_exactly(tiny_set, tmp_path):
    kw = {"n_trials": 5, "seed": 3, "cache_dir": tmp_path / "cache", "timeout_s": 60, "workers": 1,
          "progress": False}
    whole = tune.run(tiny_set, tmp_path / "whole.json", **kw)
    assert len(whole["trials"]) == 5
    part = tmp_path / "part.json"
    tune.run(tiny_set, part, stop_after=2, **kw)
    saved = json.loads(part.read_text())
    assert len(saved["trials"]) == 2  # persisted as it went
    resumed = tune.run(tiny_set, part, **kw)
    assert [(t["config"], t["loss"]) for t in resumed["trials"]] == [(t["config"], t["loss"]) for t in whole["trials"]]
    assert resumed["best"]["loss"] == min(t["loss"] for t in whole["trials"] if t["loss"] is not None)
    assert tune.best_config(part) == classic.ClassicConfig.from_dict(resumed["best"]["config"])
    with pytest.raises(ValueError, match="seed"):
        tune.run(tiny_set, part, **(kw | {"seed": 4, "n_trials": 6}))
    with pytest.raises(ValueError, match="extractors"):
        tune.run(tiny_set, part, **(kw | {"extractors": ("spots",), "n_trials": 6}))
    assert resumed["extractors"] == list(features.PAPER_KINDS) and resumed["space"] == "DiffraNet Table 7"
    # trials of an older extractor are not mixed with the current one's
    assert resumed["extractor_versions"] == {k: features.EXTRACTOR_VERSIONS[k] for k in features.PAPER_KINDS}
    saved = json.loads(part.read_text())
    saved["extractor_versions"]["glcm"] -= 1
    part.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="extractor_versions"):
        tune.run(tiny_set, part, **(kw | {"n_trials": 6}))


def test_a_spot_search_of_single_windows_is_not_resumed_with_sets_of_them(tiny_set, tmp_path):
    kw = {"n_trials": 2, "seed": 0, "cache_dir": tmp_path / "cache", "timeout_s": 60, "workers": 1,
          "progress": False, "extractors": ("spots",)}
    out = tmp_path / "spots.json"
    record = tune.run(tiny_set, out, stop_after=1, **kw)
    assert record["spot_windows"] == [list(w) for w in tune.SPOT_WINDOW_CHOICES]
    saved = json.loads(out.read_text())
    del saved["spot_windows"]  # as written before sets of windows: each window was a choice alone
    out.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="spot_windows"):
        tune.run(tiny_set, out, **kw)


def test_the_spot_backgrounds_offered_are_a_choice_of_the_search_and_kept_on_resuming(tiny_set, tmp_path):
    assert len(tune.SPOT_WINDOW_CHOICES) == 2 ** len(features.SPOT_WINDOWS) - 1
    assert tune.spot_window_choices((5, "5x2")) == [(5,), ("5x2",), (5, "5x2")]
    with pytest.raises(ValueError, match="window"):
        tune.spot_window_choices((5, 4))
    kw = {"n_trials": 3, "seed": 0, "cache_dir": tmp_path / "cache", "timeout_s": 60, "workers": 1,
          "progress": False, "extractors": ("spots",)}
    out = tmp_path / "fast.json"
    record = tune.run(tiny_set, out, windows=("5x2", 5), **kw)
    assert record["spot_windows"] == [[5], ["5x2"], [5, "5x2"]]
    for trial in record["trials"]:
        assert classic.ClassicConfig.from_dict(trial["config"]).window in (5, "5x2", (5, "5x2"))
    with pytest.raises(ValueError, match="spot_windows"):  # a resumed search keeps its backgrounds
        tune.run(tiny_set, out, windows=features.SPOT_WINDOWS, **(kw | {"n_trials": 4}))
    # given none, it resumes with its own
    assert len(tune.run(tiny_set, out, windows=(5, "5x2"), **(kw | {"n_trials": 4}))["trials"]) == 4
    assert len(tune.run(tiny_set, out, **(kw | {"n_trials": 5}))["trials"]) == 5
    # a search of the three windows, from before the cheap backgrounds, resumes as it was
    old = tmp_path / "three.json"
    record = tune.run(tiny_set, old, windows=(5, 7, 9), **kw)
    assert record["spot_windows"] == [[5], [7], [9], [5, 7], [5, 9], [7, 9], [5, 7, 9]]
    assert len(tune.run(tiny_set, old, **(kw | {"n_trials": 4}))["trials"]) == 4
    # and a new file offers all five
    assert len(tune.run(tiny_set, tmp_path / "new.json", stop_after=1, **kw)["spot_windows"]) == 31
    for text in ("", "[]", json.dumps({"format": json.loads(old.read_text())["format"], "extractors": ["spots"],
                                       "spot_windows": [[3]]})):
        (tmp_path / "odd.json").write_text(text)
        with pytest.raises(ValueError, match="odd.json' is not a diffranb trials file"):
            tune.run(tiny_set, tmp_path / "odd.json", **kw)


def test_a_trial_over_its_time_limit_is_killed_and_recorded(tiny_set, tmp_path):
    store = features.FeatureStore(tiny_set, tmp_path, workers=0, progress=False)
    store.precompute(("glcm",))
    with tune.TrialRunner(tiny_set, tmp_path, n_jobs=1, timeout_s=1e-3) as runner:
        result = runner(classic.ClassicConfig(n_estimators=1000))
        assert result["error"].startswith("timeout")
        runner.timeout_s = 60
        ok = runner(classic.ClassicConfig(n_estimators=5))  # a fresh worker takes over
        assert 0 <= ok["val_accuracy"] <= 1 and "error" not in ok


def test_tune_command_searches_then_reports(tiny_set, tmp_path, capsys):
    from diffranb import cli

    out, report = tmp_path / "trials.json", tmp_path / "report"
    assert cli.main(["tune", "hyperopt", "--data", str(tiny_set), "--trials", "3", "--out", str(out),
                     "--cache", str(tmp_path / "cache"), "--workers", "1", "--no-progress", "--report", str(report),
                     "--models", str(tmp_path / "models")]) == 0
    assert "3 trials" in capsys.readouterr().out
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["command"].startswith("diffranb ") and metrics["hyperopt"]["trials"] == 3
    with dataset.open_dataset(tiny_set) as ds:
        assert metrics["dataset_sha256"] == ds.content_sha256
    assert metrics["wall_seconds"] > 0 and "best" in metrics["methods"]
    assert (report / "search.png").is_file() and (report / "confusion.png").is_file()
    best = metrics["methods"]["best"]
    assert (tmp_path / "models" / "best" / "model.json").is_file()
    assert 0 <= best["test"]["accuracy"] <= 1 and best["config"] == tune.load_trials(out)["best"]["config"]
    # what a chapter prints and draws of a committed record
    assert tune.load_report(report) == metrics and tune.load_report(tmp_path / "none") is None
    text = tune.describe_report(metrics)
    assert metrics["command"] in text and metrics["dataset_sha256"][:16] in text and "3 trials" in text
    assert f"best ({best['label']}) accuracy" in text
    for seconds, said in ((0.02, "on features already cached"), (150.0, "after 2.5 min of feature extraction")):
        timed = metrics | {"hyperopt": metrics["hyperopt"] | {"extract_seconds": seconds}}
        assert said in tune.describe_report(timed)
    record = tune.load_trials(out)
    fig = viz.plot_report_confusions(metrics, losses=tune.losses(record), labels=[t["label"] for t in record["trials"]])
    with pytest.raises(ValueError, match="both"):
        viz.plot_report_confusions(metrics, losses=tune.losses(record))
    assert len(fig.axes) == 1 + len(metrics["methods"])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match="not a record"):
        tune.load_report(tmp_path / "bad")
