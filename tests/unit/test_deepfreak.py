"""DeepFreak: topologies, input scaling, the learning-rate schedule, checkpoints and saved models.

Everything trains the 8-filter topologies on 64 × 64 frames for an epoch or two: seconds on two cores.
"""

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from diffranb import cli, dataset, deepfreak as dfk, evaluate, features, viz  # noqa: E402

#: Width of the classifier of each topology on 512² frames in the authors' published worker ("final_size"
#: × 4 bottleneck expansion): pins the strides, paddings and pools to the original networks.
PUBLISHED_FC_INPUTS = (32768, 8192, 8192, 8192, 2048, 2048, 2048, 8192, 25600, 6400, 8192, 8192, 12800)

TINY = dict(topology=8, batch_size=8, binning=1, learning_rate=0.05, momentum=0.9, max_train=24, max_val=10)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    """120 frames of 64 × 64 pixels (48 train, 12 val, 60 test)."""
    return dataset.build(120, 3, tmp_path_factory.mktemp("data") / "tiny.h5", pixels=64, workers=0, progress=False)


@pytest.fixture(scope="module")
def trained(tiny_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "deepfreak"
    result = dfk.train(tiny_set, out, dfk.TrainConfig(**TINY, epochs=2), progress=False, threads=1)
    return out, result


@pytest.fixture(scope="module")
def max_trained(tiny_set, tmp_path_factory):
    """A model trained by the command line on 2× max-binned frames (32² input), one epoch."""
    out = tmp_path_factory.mktemp("max-model") / "deepfreak"
    args = ["train", "deepfreak", "--data", str(tiny_set), "--out", str(out), "--topology", "9", "--epochs", "1",
            "--binning", "2", "--bin-mode", "max", "--batch-size", "8", "--max-train", "16", "--threads", "1",
            "--no-progress"]
    assert cli.main(args) == 0
    return out


def test_there_are_13_topologies_and_the_chosen_one_is_the_papers():
    assert len(dfk.TOPOLOGIES) == 13
    chosen = dfk.TOPOLOGIES[dfk.CHOSEN_TOPOLOGY]
    assert (chosen.filters, chosen.conv_size, chosen.conv_stride, chosen.pool1_size, chosen.pool1_stride,
            chosen.pool2_size, chosen.pool2_stride, chosen.block_strides) == (64, 7, 2, 3, 2, 7, 1, (1, 2, 3, 3))
    assert {t.filters for t in dfk.TOPOLOGIES} == {64, 16, 8}


@pytest.mark.parametrize("index", range(13))
def test_every_topology_builds_and_runs_a_forward_pass(index):
    net = dfk.build_network(index, 5, (128, 128)).eval()
    with torch.no_grad():
        out = net(torch.zeros(2, 1, 128, 128))
    assert out.shape == (2, 5)
    shapes = dfk.feature_shapes(dfk.TOPOLOGIES[index], (128, 128))
    assert net.features(torch.zeros(1, 1, 128, 128)).shape[2:] == shapes["stage4"]


def test_classifier_widths_on_512_match_the_published_networks():
    widths = tuple(dfk.complexity(t, (512, 512))["fc_inputs"] for t in dfk.TOPOLOGIES)
    assert widths == PUBLISHED_FC_INPUTS


def test_the_chosen_topology_runs_on_a_512_frame():
    net = dfk.build_network(dfk.CHOSEN_TOPOLOGY, 5, (512, 512)).eval()
    with torch.inference_mode():
        assert net(torch.zeros(1, 1, 512, 512)).shape == (1, 5)
    c = dfk.complexity(dfk.CHOSEN_TOPOLOGY, (512, 512))
    assert c["final_map"] == (8, 8)  # 512 → 256 (conv /2) → 128 (pool /2) → 128, 64, 22, 8
    # ResNet-50 has 23.5 M weights besides its 1000-class classifier; this one's classifier is 8192 × 5
    assert c["params"] == pytest.approx(23.5e6 + 8192 * 5, rel=0.01)


def test_a_network_too_small_for_its_input_is_refused():
    with pytest.raises(ValueError, match="too small"):
        dfk.feature_shapes(dfk.TOPOLOGIES[0], (0, 0))
    with pytest.raises(ValueError, match="topology"):
        dfk.topology(13)
    with pytest.raises(ValueError, match="block_strides"):
        dfk.Topology(filters=8, block_strides=(1, 2, 2))


def test_learning_rate_is_divided_by_ten_every_ten_epochs_not_at_epoch_zero():
    config = dfk.TrainConfig(learning_rate=0.5)
    rates = [dfk.learning_rate(config, e) for e in range(31)]
    assert rates[:10] == [0.5] * 10
    assert rates[10:20] == pytest.approx([0.05] * 10)
    assert rates[20:30] == pytest.approx([0.005] * 10)
    assert rates[30] == pytest.approx(0.0005)


def test_binning_averages_blocks_and_scales_to_one():
    frame = np.arange(16, dtype=np.uint8).reshape(1, 4, 4) * 17  # 0 … 255
    binned = dfk.bin_images(frame, 2)
    assert binned.shape == (1, 2, 2)
    # top-left block: 0, 1, 4, 5 (× 17 / 255)
    assert binned[0, 0, 0] == pytest.approx((0 + 1 + 4 + 5) * 17 / 255 / 4)
    assert dfk.bin_images(frame, 1)[0, 3, 3] == pytest.approx(1.0)
    assert dfk.bin_images(np.zeros((1, 5, 5), np.uint8), 2).shape == (1, 2, 2)  # the odd row is dropped
    with pytest.raises(ValueError, match="binning"):
        dfk.bin_images(frame, 0)
    with pytest.raises(ValueError, match="uint8"):
        dfk.bin_images(frame.astype(np.uint16), 2)


def test_max_binning_takes_each_blocks_largest_value():
    frame = np.arange(16, dtype=np.uint8).reshape(1, 4, 4) * 17  # 0 … 255, rising along rows and columns
    binned = dfk.bin_images(frame, 2, "max")
    # blocks {0, 1, 4, 5}, {2, 3, 6, 7}, {8, 9, 12, 13}, {10, 11, 14, 15}: the bottom-right of each is largest
    np.testing.assert_allclose(binned[0], np.array([[5, 7], [13, 15]]) * 17 / 255, rtol=1e-6)
    assert binned.dtype == np.float32
    assert dfk.bin_images(np.zeros((1, 5, 5), np.uint8), 2, "max").shape == (1, 2, 2)  # the odd row is dropped
    np.testing.assert_array_equal(dfk.bin_images(frame, 1, "max"), dfk.bin_images(frame, 1, "mean"))


def test_a_one_pixel_spot_survives_max_binning_but_mean_binning_divides_it_by_b_squared():
    b = 4
    frame = np.zeros((8, 8), np.uint8)
    frame[5, 6] = 255  # a Bragg spot one pixel wide, in the bottom-right block
    top = dfk.bin_images(frame, b, "max")[0]
    assert top[1, 1] == 1.0 and top.sum() == 1.0
    avg = dfk.bin_images(frame, b, "mean")[0]
    assert avg[1, 1] == pytest.approx(1 / b**2) and avg.sum() == pytest.approx(1 / b**2)


def test_a_bad_bin_mode_is_refused_by_name():
    frame = np.zeros((1, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="mode = 'median'.*'mean', 'max'"):
        dfk.bin_images(frame, 2, "median")
    with pytest.raises(ValueError, match="TrainConfig.bin_mode = 'Max'"):
        dfk.TrainConfig(bin_mode="Max")
    net = dfk.build_network(8, 5, (2, 2))
    with pytest.raises(ValueError, match="bin_mode = 'sum'"):
        dfk.DeepFreakModel(net, dataset.CLASSES, 2, np.zeros((2, 2), np.float32), bin_mode="sum")
    with pytest.raises(SystemExit):  # argparse: invalid choice
        cli.build_parser().parse_args(["train", "deepfreak", "--data", "x", "--out", "y", "--bin-mode", "median"])


def test_the_mean_image_is_the_training_frames_per_pixel_mean_and_is_subtracted(tiny_set, trained):
    out, _ = trained
    model = dfk.load_model(out)
    with dataset.open_dataset(tiny_set) as ds:
        train = dfk.subset(ds, "train", TINY["max_train"], 0)
        frames = np.stack([ds.image8(i) for i in train])
    expected = frames.astype(np.float64).mean(axis=0) / 255
    np.testing.assert_allclose(model.mean, expected, atol=1e-6)
    x = model.preprocess(frames[:3]).numpy()[:, 0]
    np.testing.assert_allclose(x, frames[:3] / 255 - expected, atol=1e-6)


def test_a_max_binned_model_reloads_with_its_mode_and_predicts_the_same(tiny_set, max_trained, tmp_path):
    meta = json.loads((max_trained / "model.json").read_text())
    assert meta["bin_mode"] == "max" and meta["train_config"]["bin_mode"] == "max"
    assert meta["binning"] == 2 and meta["input_shape"] == [32, 32]
    model = dfk.load_model(max_trained)
    assert model.bin_mode == "max"
    with dataset.open_dataset(tiny_set) as ds:
        train = dfk.subset(ds, "train", 16, 0)
        frames = np.stack([ds.image8(i) for i in train])
        test = np.stack([ds.image8(i) for i in ds.indices("test")[:12]])
    # the mean image and the input are max-binned, not averaged
    expected_mean = dfk.bin_images(frames, 2, "max").astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(model.mean, expected_mean, atol=1e-6)
    x = model.preprocess(test[:2]).numpy()[:, 0]
    np.testing.assert_allclose(x, dfk.bin_images(test[:2], 2, "max") - model.mean, atol=1e-6)
    assert not np.allclose(x, dfk.bin_images(test[:2], 2, "mean") - model.mean, atol=1e-3)
    again = dfk.load_model(model.save(tmp_path / "copy"))
    assert again.bin_mode == "max"
    np.testing.assert_array_equal(again.scores(test), model.scores(test))
    np.testing.assert_array_equal(again.predict(test), model.predict(test))


def test_a_model_json_without_bin_mode_loads_as_mean(trained, tmp_path):
    out, _ = trained
    meta = json.loads((out / "model.json").read_text())
    assert meta["bin_mode"] == "mean"
    old = tmp_path / "old-model"
    old.mkdir()
    (old / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes())
    assert meta["input"] == "frame"
    del meta["bin_mode"], meta["input"]
    del meta["train_config"]["bin_mode"], meta["train_config"]["input"]
    (old / "model.json").write_text(json.dumps(meta))
    model = dfk.load_model(old)  # as written before either option existed
    assert model.bin_mode == "mean" and "bin_mode" not in model.info
    assert model.input == "frame" and model.mask is None


def test_a_checkpoint_resumes_only_with_its_bin_mode(tiny_set, trained, tmp_path):
    out, _ = trained
    with pytest.raises(ValueError, match="another run"):
        dfk.train(tiny_set, out, dfk.TrainConfig(**TINY, bin_mode="max", epochs=3), progress=False)
    # a checkpoint written before the option existed has no bin_mode: it was mean-binned and resumes as such
    old = tmp_path / "old-run"
    shutil.copytree(out, old)
    state_path = old / "checkpoint" / "state.json"
    state = json.loads(state_path.read_text())
    del state["config"]["bin_mode"]
    state_path.write_text(json.dumps(state))
    assert dfk.train(tiny_set, old, dfk.TrainConfig(**TINY, epochs=2), progress=False).resumed_from == 2


def test_subsets_are_stratified_and_seeded(tiny_set):
    with dataset.open_dataset(tiny_set) as ds:
        a, b = dfk.subset(ds, "train", 20, 0), dfk.subset(ds, "train", 20, 0)
        assert len(a) == 20 and np.array_equal(a, b)
        assert set(a) <= set(ds.indices("train"))
        assert set(ds.labels[a]) == set(ds.labels[ds.indices("train")])  # every class kept
        assert np.array_equal(dfk.subset(ds, "val", None, 0), ds.indices("val"))


def test_resuming_from_a_checkpoint_gives_the_uninterrupted_weights(tiny_set, trained, tmp_path):
    from safetensors.torch import load_file

    out, straight = trained
    config = dfk.TrainConfig(**TINY, epochs=2)
    first = dfk.train(tiny_set, tmp_path / "m", dataclasses.replace(config, epochs=1), progress=False, threads=1)
    assert first.resumed_from == 0 and len(first.history) == 1
    second = dfk.train(tiny_set, tmp_path / "m", config, progress=False, threads=1)
    assert second.resumed_from == 1 and len(second.history) == 2
    a = load_file(out / "checkpoint" / "weights.2.safetensors")
    b = load_file(tmp_path / "m" / "checkpoint" / "weights.2.safetensors")
    assert sorted(a) == sorted(b) and any(k.startswith("momentum.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for x, y in zip(straight.history, second.history):
        assert x["val_accuracy"] == y["val_accuracy"] and x["train_loss"] == y["train_loss"]
    # asking again for 2 epochs trains nothing; asking for 1 reads the first epoch back
    assert dfk.train(tiny_set, tmp_path / "m", config, progress=False).resumed_from == 2
    assert dfk.train(tiny_set, tmp_path / "m", dataclasses.replace(config, epochs=1),
                     progress=False).history == second.history[:1]


def test_a_checkpoint_of_another_run_is_refused(tiny_set, trained):
    out, _ = trained
    other = dfk.TrainConfig(**{**TINY, "learning_rate": 0.01}, epochs=3)
    with pytest.raises(ValueError, match="another run"):
        dfk.train(tiny_set, out, other, progress=False)


def test_history_records_the_schedule_speed_and_memory(trained):
    _, result = trained
    assert [e["epoch"] for e in result.history] == [1, 2]
    assert all(e["lr"] == TINY["learning_rate"] for e in result.history)
    for e in result.history:
        assert 0 <= e["val_accuracy"] <= 1 and math.isfinite(e["train_loss"])
        assert e["train_images_per_s"] > 0 and 0 < e["max_rss_mib"] < 4096
    assert result.best_val_accuracy == max(e["val_accuracy"] for e in result.history)


def test_a_saved_model_is_json_and_safetensors_and_predicts_like_the_network(tiny_set, trained):
    out, result = trained
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["model.json", "model.safetensors"]
    meta = json.loads((out / "model.json").read_text())
    for key in ("kind", "classes", "dataset_hash", "diffranb_version", "topology", "binning", "history"):
        assert key in meta
    assert meta["kind"] == "deepfreak" and meta["epoch"] == result.best_epoch
    model = evaluate.load_model(out)
    assert isinstance(model, dfk.DeepFreakModel) and model.classes == dataset.CLASSES
    with dataset.open_dataset(tiny_set) as ds:
        assert model.dataset_hash == ds.content_sha256
        idx = ds.indices("test")[:16]
        frames = np.stack([ds.image8(i) for i in idx])
        codes = model.predict(frames)
        assert codes.shape == (16,) and set(codes) <= set(range(5))
        assert np.array_equal(codes, model.predict_dataset(ds, idx, batch_size=5))
        with torch.inference_mode():
            logits = model.network(model.preprocess(frames))
        assert np.array_equal(codes, logits.argmax(1).numpy())
        m = evaluate.evaluate_model(model, ds, "val")
        assert m["same_dataset"] and m["n"] == len(ds.indices("val"))


def test_diffranb_evaluate_reads_a_deepfreak_model(tiny_set, trained, capsys):
    out, _ = trained
    assert cli.main(["evaluate", "--model", str(out), "--data", str(tiny_set), "--split", "test", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["split"] == "test" and 0 <= m["accuracy"] <= 1 and len(m["confusion"]) == 5


def test_saliency_and_grad_cam_are_maps_on_the_frame(tiny_set, trained):
    model = dfk.load_model(trained[0])
    with dataset.open_dataset(tiny_set) as ds:
        frames = np.stack([ds.image8(i) for i in ds.indices("test")[:3]])
    for fn in (dfk.saliency, dfk.grad_cam):
        maps = fn(model, frames)
        assert maps.shape == frames.shape and maps.dtype == np.float32
        assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
    assert all(p.grad is None for p in model.network.parameters())


def test_train_config_names_the_bad_field():
    with pytest.raises(ValueError, match="momentum"):
        dfk.TrainConfig(momentum=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        dfk.TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="topology"):
        dfk.TrainConfig(topology=20)


def test_cli_trains_a_deepfreak_model(tiny_set, tmp_path, capsys):
    out = tmp_path / "cli-model"
    args = ["train", "deepfreak", "--data", str(tiny_set), "--out", str(out), "--topology", "9", "--epochs", "1",
            "--binning", "2", "--batch-size", "8", "--max-train", "16", "--threads", "1", "--no-progress"]
    assert cli.main(args) == 0
    assert "best epoch 1" in capsys.readouterr().out
    meta = json.loads((out / "model.json").read_text())
    assert meta["binning"] == 2 and meta["input_shape"] == [32, 32] and meta["command"].startswith("diffranb ")


def test_batch_size_one_with_a_one_pixel_last_map_is_infeasible(tiny_set, tmp_path):
    # topology 4 (conv stride 4) on 64² frames ends in a 1 × 1 map: BatchNorm cannot train on one value
    assert dfk.feature_shapes(dfk.TOPOLOGIES[3], (64, 64))["stage4"] == (1, 1)
    with pytest.raises(dfk.Infeasible, match="batch size 1"):
        dfk.train(tiny_set, tmp_path / "m", dfk.TrainConfig(**{**TINY, "topology": 3, "batch_size": 1}, epochs=1),
                  progress=False)


def test_report_writes_metrics_curves_and_confusion(tiny_set, trained, tmp_path):
    record = dfk.report(trained[0], tiny_set, tmp_path / "rec", command="diffranb train deepfreak …")
    assert {p.name for p in (tmp_path / "rec").iterdir()} == {"metrics.json", "learning_curves.png", "confusion.png"}
    saved = json.loads((tmp_path / "rec" / "metrics.json").read_text())
    assert saved["command"] == record["command"] and saved["diffranb_version"]
    with dataset.open_dataset(tiny_set) as ds:
        assert saved["dataset_sha256"] == ds.content_sha256
        assert saved["test"]["n"] == len(ds.indices("test"))
    assert len(saved["history"]) == 2 and saved["wall_seconds"] > 0
    assert dfk.load_report(tmp_path / "rec") == saved and dfk.load_report(tmp_path / "none") is None
    text = dfk.describe_report(saved)
    assert len(viz.plot_training_record(saved).axes) == 4  # no search: curves, confusion and its colour bar
    assert "configured by hand" in text and "2 epochs in" in text and "DeepFreak accuracy" in text
    # a search summary written before the total time was recorded, or none at all
    older = {**saved, "bohb": {"summary": {"seconds": 0.01, "budgets": [1.0, 3.0]}, "n_evaluations": 4,
                               "evaluation_span_seconds": 120.0}}
    assert "chosen by BOHB: 4 evaluations in 2.0 min, budgets 1, 3 epochs" in dfk.describe_report(older)
    bare = {**saved, "bohb": {"summary": None, "n_evaluations": 4}}
    assert "chosen by BOHB: 4 evaluations (time not recorded)" in dfk.describe_report(bare)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.json").write_text('{"test": {}}')
    with pytest.raises(ValueError, match="not a record"):
        dfk.load_report(tmp_path / "bad")
    # several records side by side: a table and their validation curves
    searched = {**older, "train_config": {**saved["train_config"], "binning": 2, "bin_mode": "max", "flip": True}}
    table = dfk.compare_records({"hand": saved, "searched": searched, "missing": None})
    lines = table.splitlines()
    assert len(lines) == 2 + 2 + 1 and lines[-1].startswith("| paper |") and "98.51 %" in lines[-1]
    assert lines[2].startswith("| hand | set by hand: topology 9 (8 filters") and "binned 1× by mean |" in lines[2]
    assert lines[3].startswith("| searched | BOHB: ") and "binned 2× by max, mirrored in training |" in lines[3]
    assert f"{100 * saved['test']['accuracy']:.2f} %" in lines[2]
    with pytest.raises(ValueError, match="no record"):
        dfk.compare_records({"missing": None})
    ax = viz.plot_validation_curves({"hand": saved["history"], "searched": searched["history"]}, target=98.51)
    assert len(ax.lines) == 3 and [t.get_text() for t in ax.get_legend().get_texts()][:2] == ["hand", "searched"]
    assert list(ax.lines[0].get_ydata()) == [100 * e["val_accuracy"] for e in saved["history"]]
    with pytest.raises(ValueError, match="no run"):
        viz.plot_validation_curves({})


def test_the_benchmark_times_a_trained_model_as_it_sorts_frames(max_trained, capsys):
    from diffranb import bench

    model = dfk.load_model(max_trained)
    figures = dfk.benchmark(threads=(1,), batch_sizes=(1, 4), min_seconds=0.01, model=model)
    assert figures["model"] == "trained" and figures["binning"] == 2 and figures["bin_mode"] == "max"
    assert figures["pixels"] == 64 and figures["topology"] == 10  # trained with --topology 9, counted from 0
    assert figures["train_batch"] == 8
    assert set(k for k in figures if k.startswith("train_images_per_s")) == {"train_images_per_s_bin2"}
    assert all(figures[f"infer_frames_per_s_1thread_batch{b}"] > 0 for b in (1, 4))
    # the command line's path, and a random network at full resolution when no model is given
    printed = bench.run("deepfreak", repeats=2, workers=2, model=str(max_trained))
    assert "bin_mode" in capsys.readouterr().out and printed["model"] == "trained"
    assert printed["frames_per_s_2proc"] > 0  # two processes sorting frames of the model's size
    random = dfk.benchmark(8, 64, threads=(1,), batch_sizes=(2,), train_binnings=(2,), min_seconds=0.01)
    assert "model" not in random and random["infer_frames_per_s_1thread_batch2"] > 0
    # a model without its training record still runs (batch 16); one of no known topology is refused
    del model.info["train_config"]
    figures = dfk.benchmark(threads=(1,), batch_sizes=(1,), min_seconds=0.01, model=model)
    assert figures["topology"] == 10 and figures["train_batch"] == 16
    model.network.topology = dataclasses.replace(dfk.TOPOLOGIES[0], filters=4)
    with pytest.raises(ValueError, match="none of the 13"):
        dfk.benchmark(threads=(1,), min_seconds=0.01, model=model)


@pytest.mark.parametrize("binning, mode, kind", [(1, "mean", "frame"), (2, "mean", "frame"), (2, "max", "frame"),
                                                 (4, "mean", "frame"), (4, "max", "frame"), (1, "max", "spots"),
                                                 (2, "max", "spots"), (4, "mean", "spots")])
def test_the_frame_store_serves_exactly_what_binning_the_file_gives(tiny_set, binning, mode, kind):
    mask = None
    if kind == "spots":  # this set's own mask is empty: a made-up one, so that masking is exercised
        mask = np.zeros((64, 64), bool)
        mask[28:36, 30:64] = True
        mask[3, 7] = True
    with dataset.open_dataset(tiny_set) as ds:
        indices = ds.indices("train")
        frames = dfk.BinnedFrames(ds, binning, mode, indices, input_kind=kind, mask=mask)
        assert frames.enabled and frames.nbytes > 0
        order = np.random.default_rng(1).permutation(indices)
        for _ in range(2):  # the first pass reads, the second serves from memory
            for x, labels, chunk in frames.batches(order, 7):
                images, want_labels, want_chunk = next(ds.batches(chunk, len(chunk)))
                expected = dfk.network_input(images, binning, mode, kind, mask)
                assert x.dtype == np.float32 and np.array_equal(x, expected)
                assert np.array_equal(labels, want_labels) and np.array_equal(chunk, want_chunk)
        assert frames.reads == len(indices)  # every frame read once
        with pytest.raises(ValueError, match="outside"):
            next(frames.batches(ds.indices("test")[:2], 2))
        # too little memory: nothing is kept, every pass reads, and the floats are the same
        small = dfk.BinnedFrames(ds, binning, mode, indices, max_mib=0, input_kind=kind, mask=mask)
        assert not small.enabled and small.nbytes == 0
        for _ in range(2):
            for x, _, chunk in small.batches(order, 7):
                images = next(ds.batches(chunk, len(chunk)))[0]
                assert np.array_equal(x, dfk.network_input(images, binning, mode, kind, mask))
        assert small.reads == 2 * len(indices)


def test_training_gives_the_same_weights_with_the_frame_store_or_without(tiny_set, trained, tmp_path):
    from safetensors.torch import load_file

    out, stored = trained
    assert stored.history[0]["train_loss"] > 0
    config = dfk.TrainConfig(**TINY, epochs=2)
    read = dfk.train(tiny_set, tmp_path / "read", config, progress=False, threads=1, frame_store_mib=0)
    a = load_file(out / "checkpoint" / "weights.2.safetensors")
    b = load_file(tmp_path / "read" / "checkpoint" / "weights.2.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for x, y in zip(stored.history, read.history):
        assert x["train_loss"] == y["train_loss"] and x["val_accuracy"] == y["val_accuracy"]
    with dataset.open_dataset(tiny_set) as ds:
        frames = dfk.BinnedFrames(ds, 2, "max", ds.indices("train"))
        with pytest.raises(ValueError, match="binned 2 × 2 by max"):
            dfk.mean_image(ds, ds.indices("train"), 2, "mean", frames=frames)


def test_the_frame_benchmark_times_the_file_and_the_store_in_one_run(tiny_set, capsys):
    with dataset.open_dataset(tiny_set) as ds:
        result = dfk.benchmark_frames(ds, top=8, binning=2, mode="max", batch=8, n_frames=40, rounds=1)
    assert result["frames"] == 40 and result["store_mib"] == pytest.approx(40 * 32 * 32 / 2**20)
    for key in ("load_frames_per_s_file", "load_frames_per_s_store", "train_frames_per_s_file",
                "train_frames_per_s_store"):
        assert 0 < result[key] < math.inf
    assert result["train_speedup"] == result["train_frames_per_s_store"] / result["train_frames_per_s_file"]
    with dataset.open_dataset(tiny_set) as ds, pytest.raises(ValueError, match="two batches"):
        dfk.benchmark_frames(ds, batch=8, n_frames=10)
    assert cli.main(["bench", "sim", "--data", str(tiny_set)]) == 2
    assert "--data is for bench deepfreak, read and follow only" in capsys.readouterr().err


def test_flip_mirrors_whole_frames_left_right_and_leaves_the_rest():
    x = np.arange(40 * 3 * 4, dtype=np.float32).reshape(40, 3, 4)
    out = dfk._flip_half(x, np.random.default_rng(0))
    mirrored = [k for k in range(40) if np.array_equal(out[k], x[k, :, ::-1])]
    kept = [k for k in range(40) if np.array_equal(out[k], x[k])]
    assert sorted(mirrored + kept) == list(range(40)) and 10 < len(mirrored) < 30
    assert np.array_equal(x, np.arange(40 * 3 * 4, dtype=np.float32).reshape(40, 3, 4))  # input untouched
    np.testing.assert_array_equal(out, dfk._flip_half(x, np.random.default_rng(0)))  # seeded
    with pytest.raises(ValueError, match="flip"):
        dfk.TrainConfig(flip=1)


def test_training_with_flips_is_seeded_differs_and_keeps_its_checkpoint(tiny_set, tmp_path):
    from safetensors.torch import load_file

    config = dfk.TrainConfig(**TINY, epochs=1, flip=True)
    a = dfk.train(tiny_set, tmp_path / "a", config, progress=False, threads=1)
    b = dfk.train(tiny_set, tmp_path / "b", config, progress=False, threads=1)
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]
    dfk.train(tiny_set, tmp_path / "plain", dataclasses.replace(config, flip=False), progress=False, threads=1)
    plain = load_file(tmp_path / "plain" / "checkpoint" / "weights.1.safetensors")
    flipped = load_file(tmp_path / "a" / "checkpoint" / "weights.1.safetensors")
    assert any(not torch.equal(plain[k], flipped[k]) for k in plain)  # the same run but for the flips
    with pytest.raises(ValueError, match="another run"):
        dfk.train(tiny_set, tmp_path / "a", dataclasses.replace(config, flip=False, epochs=2), progress=False,
                  threads=1)
    assert json.loads((tmp_path / "a" / "model.json").read_text())["train_config"]["flip"] is True


def test_the_spot_input_is_the_binned_significance_on_an_asinh_scale():
    rng = np.random.default_rng(3)
    frames = rng.poisson(40.0, (2, 48, 48)).astype(np.uint8)
    frames[0, 20, 30] = 250  # a one-pixel spot
    frames[:, 5, 5] = 255  # a hot pixel, masked
    mask = np.zeros((48, 48), bool)
    mask[5, 5] = True
    x = dfk.network_input(frames, 2, "max", "spots", mask)
    assert x.shape == (2, 24, 24) and x.dtype == np.float32
    for k in range(2):
        z = features.spot_significance(frames[k], dfk.SPOT_INPUT_WINDOW, mask, dfk.SPOT_INPUT_KERNEL)[0]
        zmax = z.reshape(24, 2, 24, 2).max(axis=(1, 3))
        want = np.clip(np.rint(16 * np.arcsinh(zmax / 2.0)), -127, 127) / 64
        np.testing.assert_allclose(x[k], want, atol=1e-7)
        # the code's step is 0.125 in z about 0 (1/64 of the input), about 6 % of a bright spot
        assert np.all(np.abs(2 * np.sinh(4 * x[k]) - zmax) <= 0.0625 + 0.032 * np.abs(zmax))
    # the spot's box sums peak within a pixel of it: blocks 9–10 × 14–15 of the 2 × 2 grid
    assert x[0, 9:11, 14:16].max() == x[0].max() > np.arcsinh(5.0) / 4  # z > 10
    assert x[1].max() < np.arcsinh(3.0) / 4  # no spot: noise only, z < 6
    # the masked hot pixel reads as background (its block is noise); unmasked, it is a bright spot
    assert x[:, 2, 2].max() < np.arcsinh(3.0) / 4
    assert dfk.network_input(frames, 2, "max", "spots")[:, 2, 2].min() > np.arcsinh(5.0) / 4
    mean_binned = dfk.network_input(frames, 2, "mean", "spots", mask)
    assert mean_binned[0, 10, 15] < x[0, 10, 15]  # averaging a block dilutes the spot
    with pytest.raises(ValueError, match="input_kind = 'zmap'"):
        dfk.network_input(frames, 2, "max", "zmap")
    with pytest.raises(ValueError, match="TrainConfig.input"):
        dfk.TrainConfig(input="zmap")
    with pytest.raises(ValueError, match="uint8"):
        dfk.network_input(frames.astype(np.float32), 2, "max", "spots")


@pytest.fixture(scope="module")
def spots_trained(classic_tiny_set, tmp_path_factory):
    """A model trained by the command line on the spot input of 128² frames, 2× max-binned, one epoch."""
    out = tmp_path_factory.mktemp("spots-model") / "deepfreak"
    args = ["train", "deepfreak", "--data", str(classic_tiny_set), "--out", str(out), "--topology", "9", "--epochs", "1",
            "--binning", "2", "--bin-mode", "max", "--input", "spots", "--batch-size", "8", "--max-train", "16",
            "--threads", "1", "--no-progress"]
    assert cli.main(args) == 0
    return out


def test_a_spot_input_model_keeps_the_training_splits_mask_and_predicts_the_same_reloaded(classic_tiny_set,
                                                                                       spots_trained, tmp_path):
    from safetensors.torch import load_file, save_file

    meta = json.loads((spots_trained / "model.json").read_text())
    assert meta["input"] == "spots" and meta["train_config"]["input"] == "spots"
    assert meta["spot_window"] == dfk.SPOT_INPUT_WINDOW and meta["mask_shape"] == [128, 128]
    mask = features.FeatureStore(classic_tiny_set, progress=False).mask()  # learnt from the training split
    assert mask.any()  # the beamstop's shadow, at least
    model = dfk.load_model(spots_trained)
    assert model.input == "spots" and np.array_equal(model.mask, mask) and meta["masked_pixels"] == mask.sum()
    with dataset.open_dataset(classic_tiny_set) as ds:
        train = dfk.subset(ds, "train", 16, 0)
        frames = np.stack([ds.image8(i) for i in train])
        test = np.stack([ds.image8(i) for i in ds.indices("test")[:12]])
    expected_mean = dfk.network_input(frames, 2, "max", "spots", mask).astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(model.mean, expected_mean, atol=1e-6)
    x = model.preprocess(test[:2]).numpy()[:, 0]
    np.testing.assert_allclose(x, dfk.network_input(test[:2], 2, "max", "spots", mask) - model.mean, atol=1e-6)
    again = dfk.load_model(model.save(tmp_path / "copy"))
    assert again.input == "spots" and np.array_equal(again.mask, mask)
    np.testing.assert_array_equal(again.predict(test), model.predict(test))
    assert dfk.grad_cam(model, test[:2]).shape == (2, 128, 128)
    assert not np.allclose(x, dfk.network_input(test[:2], 2, "max", "spots") - model.mean)  # the mask matters
    # the mask is part of the model: without it, or with another one, loading refuses
    tensors = load_file(spots_trained / "model.safetensors")
    lost = tmp_path / "lost"
    lost.mkdir()
    (lost / "model.json").write_text(json.dumps(meta))
    save_file({k: v for k, v in tensors.items() if k != "detector_mask"}, lost / "model.safetensors")
    with pytest.raises(ValueError, match="without its detector mask"):
        dfk.load_model(lost)
    other = dict(tensors)
    other["detector_mask"] = torch.roll(tensors["detector_mask"], 1, 0)  # as many pixels, elsewhere
    save_file(other, lost / "model.safetensors")
    with pytest.raises(ValueError, match="not the one model.json describes"):
        dfk.load_model(lost)
    # a spot input made by another version of the spot map is refused too
    save_file(tensors, lost / "model.safetensors")
    (lost / "model.json").write_text(json.dumps({**meta, "spot_version": meta["spot_version"] - 1}))
    with pytest.raises(ValueError, match="retrain"):
        dfk.load_model(lost)
    (lost / "model.json").write_text(json.dumps({**meta, "input": "frame"}))
    with pytest.raises(ValueError, match="disagree"):
        dfk.load_model(lost)
    # a spot input needs a mask (all False for none), a frame input takes none
    with pytest.raises(ValueError, match="needs one"):
        dfk.DeepFreakModel(model.network, model.classes, 2, model.mean, bin_mode="max", input_kind="spots")
    with pytest.raises(ValueError, match="needs one"):
        dfk.DeepFreakModel(model.network, model.classes, 2, model.mean, bin_mode="max", mask=mask)
    frame = dfk.DeepFreakModel(model.network, model.classes, 2, model.mean, bin_mode="max")
    assert dfk.load_model(frame.save(tmp_path / "frame")).input == "frame"


def test_a_spot_input_checkpoint_resumes_only_as_spots_and_with_its_mask(classic_tiny_set, spots_trained,
                                                                         tmp_path):
    from safetensors.torch import load_file, save_file

    config = dfk.TrainConfig(topology=9, epochs=2, binning=2, bin_mode="max", input="spots", batch_size=8,
                             max_train=16)
    with pytest.raises(ValueError, match="another run"):
        dfk.train(classic_tiny_set, spots_trained, dataclasses.replace(config, input="frame"), progress=False,
                  threads=1)
    run = tmp_path / "run"
    shutil.copytree(spots_trained, run)
    state_path = run / "checkpoint" / "state.json"
    state = json.loads(state_path.read_text())
    weights = run / "checkpoint" / state["weights"]
    tensors = load_file(weights)
    assert np.array_equal(tensors["detector_mask"].numpy().astype(bool),
                          features.FeatureStore(classic_tiny_set, progress=False).mask())
    tensors["detector_mask"] = 1 - tensors["detector_mask"]
    save_file(tensors, weights)
    state["weights_sha256"] = dfk._sha256_file(weights)
    state_path.write_text(json.dumps(state))
    with pytest.raises(ValueError, match="detector mask"):
        dfk.train(classic_tiny_set, run, config, progress=False, threads=1)
    # nor one of a spot map made by another version
    older = tmp_path / "older"
    shutil.copytree(spots_trained, older)
    state_path = older / "checkpoint" / "state.json"
    state = json.loads(state_path.read_text())
    assert state["spot_input"]["spot_window"] == dfk.SPOT_INPUT_WINDOW
    state["spot_input"]["spot_version"] -= 1
    state_path.write_text(json.dumps(state))
    with pytest.raises(ValueError, match="spot input made as"):
        dfk.train(classic_tiny_set, older, config, progress=False, threads=1)
    resumed = tmp_path / "resumed"  # the fixture's directory stays as it was for the other tests
    shutil.copytree(spots_trained, resumed)
    assert dfk.train(classic_tiny_set, resumed, config, progress=False, threads=1).resumed_from == 1


def test_the_benchmark_times_a_spot_input_model_with_its_spot_map(classic_tiny_set, spots_trained):
    from diffranb import bench

    model = dfk.load_model(spots_trained)
    printed = bench.run("deepfreak", repeats=2, workers=2, model=str(spots_trained))
    assert printed["input"] == "spots" and printed["pixels"] == 128 and printed["frames_per_s_2proc"] > 0
    figures = dfk.benchmark(threads=(1,), batch_sizes=(2,), min_seconds=0.01, model=model)
    assert figures["input"] == "spots" and figures["infer_frames_per_s_1thread_batch2"] > 0
    with dataset.open_dataset(classic_tiny_set) as ds:
        result = dfk.benchmark_frames(ds, top=9, binning=2, mode="max", batch=8, n_frames=16, rounds=1,
                                      input_kind="spots", mask=model.mask)
    assert result["input"] == "spots" and result["store_mib"] == pytest.approx(16 * 64 * 64 / 2**20)
