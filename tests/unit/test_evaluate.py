"""Metrics on hand-made confusions, the model-kind dispatch and the evaluate command."""

import json
import sys
import types

import numpy as np
import pytest

from diffranb import cli, dataset, evaluate

CLASSES = list(dataset.CLASSES)


def from_confusion(confusion):
    """y_true, y_pred realising a confusion matrix (rows true, columns predicted)."""
    pairs = [(i, j) for i, row in enumerate(confusion) for j, n in enumerate(row) for _ in range(n)]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def test_metrics_of_a_hand_made_confusion():
    confusion = [[10, 0, 0, 0, 0],   # blank
                 [2, 8, 0, 0, 0],    # no-crystal: 2 called blank (still "no diffraction")
                 [0, 1, 7, 2, 0],    # weak: 1 missed as no-crystal
                 [0, 0, 1, 9, 0],
                 [0, 0, 0, 0, 10]]
    m = evaluate.metrics(*from_confusion(confusion), CLASSES)
    assert m["n"] == 50 and m["confusion"] == confusion
    assert m["accuracy"] == pytest.approx(44 / 50)
    assert m["per_class"]["blank"]["precision"] == pytest.approx(10 / 12)
    assert m["per_class"]["no-crystal"]["precision"] == pytest.approx(8 / 9)
    assert m["per_class"]["weak"]["recall"] == pytest.approx(0.7)
    assert m["per_class"]["good"]["precision"] == pytest.approx(9 / 11)
    f1 = [2 * p * r / (p + r) for p, r in [(10 / 12, 1), (8 / 9, 0.8), (7 / 8, 0.7), (9 / 11, 0.9), (1, 1)]]
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    # binary: only the weak frame called no-crystal crosses the line
    assert m["binary_confusion"] == [[20, 0], [1, 29]]
    assert m["binary_accuracy"] == pytest.approx(49 / 50)
    json.dumps(m, allow_nan=False)


def test_a_class_never_predicted_has_precision_zero_not_nan():
    m = evaluate.metrics([0, 1, 2], [0, 0, 0], CLASSES[:3])
    assert m["per_class"]["weak"]["precision"] == 0.0 and m["per_class"]["weak"]["f1"] == 0.0
    with pytest.raises(ValueError, match="codes"):
        evaluate.metrics([0, 5], [0, 1], CLASSES[:3])


def test_paper_reference_holds_the_overall_figures():
    assert evaluate.PAPER["test_accuracy"] == {"DeepFreak": 98.51, "RF+GLCM": 98.45, "SVM+GLCM": 97.66}
    assert evaluate.PAPER["binary_accuracy"] == 99.83
    rows = evaluate.comparison_rows({"RF+GLCM": evaluate.metrics([0, 1], [0, 1], CLASSES[:2])})
    assert rows[0] == ("RF+GLCM accuracy", 100.0, 98.45)


def write_model_json(path, **info):
    path.mkdir()
    (path / "model.json").write_text(json.dumps(info))
    return path


def test_load_model_dispatches_on_kind_lazily(tmp_path, monkeypatch):
    fake = types.ModuleType("fake_deepfreak")
    fake.load_model = lambda p: ("loaded", str(p))
    monkeypatch.setitem(sys.modules, "fake_deepfreak", fake)
    monkeypatch.setitem(evaluate.KINDS, "deepfreak", "fake_deepfreak")
    path = write_model_json(tmp_path / "m", kind="deepfreak", classes=CLASSES, dataset_hash="0", diffranb_version="x")
    assert evaluate.load_model(path) == ("loaded", str(path))
    with pytest.raises(ValueError, match="missing"):
        evaluate.load_model(write_model_json(tmp_path / "bad", kind="classic"))
    with pytest.raises(ValueError, match="kind"):
        evaluate.load_model(write_model_json(tmp_path / "odd", kind="knn", classes=CLASSES, dataset_hash="0",
                                             diffranb_version="x"))
    with pytest.raises(FileNotFoundError):
        evaluate.load_model(tmp_path / "none")


class Oracle:
    """A 'model' that predicts from a lookup of the set's labels, wrong on strong frames (called good)."""

    classes = tuple(CLASSES)
    dataset_hash = "elsewhere"

    def __init__(self, ds):
        self.ds = ds

    def predict(self, images):
        raise AssertionError("predict_dataset is preferred")

    def predict_dataset(self, ds, indices):
        y = ds.labels[indices].astype(np.int64)
        return np.where(y == 4, 3, y)


def test_evaluate_model_on_a_split(tmp_path):
    path = dataset.build(40, 1, tmp_path / "s.h5", pixels=64, workers=0, progress=False)
    with dataset.open_dataset(path) as ds:
        result = evaluate.evaluate_model(Oracle(ds), ds, "test", progress=True)  # no progress of its own: fine
        test = ds.indices("test")
        strong = int(np.sum(ds.labels[test] == 4))
    assert result["n"] == len(test) and result["split"] == "test"
    assert result["accuracy"] == pytest.approx(1 - strong / len(test))
    assert result["binary_accuracy"] == 1.0 and result["same_dataset"] is False


def test_evaluate_command_prints_json(tmp_path, capsys):
    data = dataset.build(60, 2, tmp_path / "s.h5", pixels=128, workers=0, progress=False)
    model = tmp_path / "model"
    assert cli.main(["train", "classic", "--data", str(data), "--out", str(model), "--distances", "1,2",
                     "--angles", "0", "--n-estimators", "10", "--workers", "0"]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", "--model", str(model), "--data", str(data), "--split", "test", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "test" and result["same_dataset"] is True and 0 <= result["accuracy"] <= 1
    assert cli.main(["evaluate", "--model", str(model), "--data", str(data)]) == 0
    assert "RF+GLCM accuracy" in capsys.readouterr().out


def test_accuracy_among_the_crystal_frames_counts_every_error_of_their_rows():
    classes = ["blank", "no-crystal", "weak", "good", "strong"]
    m = evaluate.metrics([0, 1, 2, 2, 3, 4, 4], [1, 1, 1, 2, 3, 3, 4], classes)
    assert evaluate.accuracy_among(m) == 3 / 5  # a weak frame called no-crystal is an error too
    assert evaluate.accuracy_among(m, ("blank",)) == 0.0
    with pytest.raises(ValueError, match="not among"):
        evaluate.accuracy_among(m, ("ice",))
    with pytest.raises(ValueError, match="no frame"):
        evaluate.accuracy_among(evaluate.metrics([0], [0], classes))


def test_read_test_record_reads_every_kind_of_record(tmp_path):
    test = {"split": "test", "accuracy": 0.9}
    (tmp_path / "evaluated.json").write_text(json.dumps({"command": "diffranb evaluate", "metrics": test}))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"test": test | {"accuracy": 0.8}}))
    searched = {"methods": {"best": {"test": test | {"accuracy": 0.7}}, "RF+GLCM": {"test": test | {"accuracy": 0.6}}}}
    (tmp_path / "search.json").write_text(json.dumps(searched))
    assert evaluate.read_test_record(tmp_path / "evaluated.json")["accuracy"] == 0.9
    assert evaluate.read_test_record(tmp_path / "run")["accuracy"] == 0.8
    assert evaluate.read_test_record(tmp_path / "search.json")["accuracy"] == 0.7
    assert evaluate.read_test_record(tmp_path / "search.json", "RF+GLCM")["accuracy"] == 0.6
    with pytest.raises(KeyError, match="SVM"):
        evaluate.read_test_record(tmp_path / "search.json", "SVM+GLCM")
    (tmp_path / "val.json").write_text(json.dumps({"metrics": test | {"split": "val"}}))
    with pytest.raises(ValueError, match="'val' split"):
        evaluate.read_test_record(tmp_path / "val.json")
    with pytest.raises(FileNotFoundError):
        evaluate.read_test_record(tmp_path / "none.json")


def test_sorting_rates_read_every_bench_s_figures():
    from diffranb import bench

    assert bench.sorting_rates({"frames_per_s_1core": 200.0, "frames_per_s_2proc": 380.0}) == (200.0, 380.0)
    deepfreak = {"infer_frames_per_s_1thread_batch1": 57.0, "infer_frames_per_s_2thread_batch1": 37.0,
                 "frames_per_s_2proc": 124.0}
    assert bench.sorting_rates(deepfreak) == (57.0, 124.0)
    with pytest.raises(KeyError, match="2-process"):
        bench.sorting_rates({"frames_per_s_1core": 1.0})


def test_speed_table_reads_one_run_of_a_file_of_several(tmp_path):
    from diffranb import bench

    speed = tmp_path / "speed"
    speed.mkdir()
    (tmp_path / "run.json").write_text(json.dumps(
        {"metrics": {"split": "test", "accuracy": 0.97, "binary_accuracy": 0.998}}))
    runs = {"runs": [{"name": "fast", "figures": {"frames_per_s_1core": 130.0, "frames_per_s_2proc": 260.0}},
                     {"name": "slow", "figures": {"frames_per_s_1core": 70.0, "frames_per_s_2proc": 135.0}}]}
    (speed / "bench.json").write_text(json.dumps(runs))
    (speed / "one.json").write_text(json.dumps({"figures": runs["runs"][0]["figures"]}))

    def table(**pipelines):
        (speed / "pipelines.json").write_text(json.dumps({"pipelines": pipelines}))
        return bench.speed_table(speed)

    rows = table(slow={"speed": "bench.json", "run": "slow", "test": "run.json"},
                 fast={"speed": "bench.json", "run": "fast", "test": "run.json"})
    assert [(r["name"], r["one_core"], r["processes"]) for r in rows] == [("slow", 70.0, 135.0),
                                                                          ("fast", 130.0, 260.0)]
    assert rows[0]["accuracy"] == pytest.approx(97.0)
    with pytest.raises(ValueError, match="'gone', not in"):
        table(x={"speed": "bench.json", "run": "gone", "test": "run.json"})
    with pytest.raises(ValueError, match="must name one of the runs"):
        table(x={"speed": "bench.json", "test": "run.json"})
    with pytest.raises(ValueError, match="holds one bench"):
        table(x={"speed": "one.json", "run": "fast", "test": "run.json"})


def test_speed_table_pairs_each_pipeline_s_speed_with_its_test(tmp_path):
    from diffranb import bench

    speed = tmp_path / "speed"
    speed.mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(
        {"test": {"split": "test", "accuracy": 0.95, "binary_accuracy": 0.99}}))
    (speed / "run.json").write_text(json.dumps({"figures": {"frames_per_s_1core": 80.0, "frames_per_s_2proc": 150.0}}))
    index = {"pipelines": {"a run": {"speed": "run.json", "test": "run"},
                           "not timed": {"speed": "missing.json", "test": "run"}}}
    assert bench.speed_table(speed) == []  # no index yet
    (speed / "pipelines.json").write_text(json.dumps(index))
    rows = bench.speed_table(speed)
    assert [r["name"] for r in rows] == ["a run"]
    assert rows[0]["accuracy"] == pytest.approx(95.0) and rows[0]["binary_accuracy"] == pytest.approx(99.0)
    assert (rows[0]["one_core"], rows[0]["processes"]) == (80.0, 150.0)


def test_sorting_benches_hand_the_model_the_same_batches_on_one_core_and_on_processes():
    from diffranb import bench

    assert bench._batches(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert bench._batches(64, 32) == [(0, 32), (32, 64)] and bench._batches(3, 32) == [(0, 3)]
    with pytest.raises(ValueError, match="at least 1 frame"):
        bench._batches(5, 0)
    sizes = []
    frames = np.zeros((5, 8, 8), np.uint8)
    seconds = bench._sorting_seconds({"f": lambda x: sizes.append(len(x)), "g": lambda x: None}, frames, 2)
    assert set(seconds) == {"f", "g"} and all(s >= 0 for s in seconds.values())
    assert sizes == [2] + [2, 2, 1] * bench.CLASSIC_ROUNDS  # a warm-up call, then every pass in calls of 2


def test_bench_refuses_a_batch_where_it_means_nothing_and_a_count_below_one():
    from diffranb import bench

    with pytest.raises(ValueError, match="--batch is for bench classic, deepfreak, stacked and read only"):
        bench.run("sim", batch=8)
    with pytest.raises(ValueError, match="--repeats = 0"):
        bench.run("classic", repeats=0)
    with pytest.raises(ValueError, match="--batch = -1"):
        bench.run("stacked", batch=-1, model="somewhere")
    assert cli.main(["bench", "malloc", "--batch", "4"]) == 2


def test_bench_times_the_spot_statistics_compiled_against_their_baseline_and_each_slow_median():
    from diffranb import bench

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 64, 64)).astype(np.uint8)
    out = bench._spot_statistics_rates(frames, (5, 9), rng.random((64, 64)) < 0.1)
    assert set(out) == {"spot_statistics_frames_per_s_compiled", "spot_statistics_frames_per_s_reference",
                        "spot_statistics_speedup", "median_9x9_frames_per_s_compiled",
                        "median_9x9_frames_per_s_opencv", "median_9x9_speedup"}  # OpenCV's 5 × 5 is its fastest
    assert all(v > 0 and np.isfinite(v) for v in out.values())
    # iterated 5 × 5 medians are OpenCV's own: no median of ours to time against it
    out = bench._spot_statistics_rates(frames, (5, "5x2", "5x3"), None)
    assert set(out) == {"spot_statistics_frames_per_s_compiled", "spot_statistics_frames_per_s_reference",
                        "spot_statistics_speedup"}
