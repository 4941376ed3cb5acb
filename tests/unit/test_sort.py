"""Sorting frames from files with a saved model (diffranb.sort, ``diffranb sort``)."""

import csv

import h5py
import numpy as np
import pytest

from diffranb import classic, cli, dataset, evaluate, features, sort


@pytest.fixture(scope="module")
def forest(classic_tiny_set, tmp_path_factory):
    """A spot forest of the 128² tiny set, saved: its detector mask fixes the frame size."""
    root = tmp_path_factory.mktemp("sort")
    store = features.FeatureStore(classic_tiny_set, root / "cache", workers=0, progress=False)
    model = classic.train(classic.ClassicConfig(extractor="spots", n_estimators=20), store, n_jobs=1)
    return classic.save_model(model, root / "spots")


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_form_of_the_same_frames_sorts_alike(forest, classic_tiny_set, tmp_path):
    """The set itself, its raw frames in another HDF5 file and in .npy, and its exported PNGs: the same
    classes and probabilities, equal to the model's own predictions."""
    model = evaluate.load_model(forest)
    with dataset.open_dataset(classic_tiny_set) as ds:
        raw = ds.images[:]
        expected = model.predict(dataset.to_8bit(raw))
        test = ds.indices("test")
    with h5py.File(tmp_path / "run.h5", "w") as f:
        f.create_dataset("entry/data/data", data=raw)
        f.create_dataset("entry/meta/exposure", data=np.ones(3))  # not frames: ignored
    np.save(tmp_path / "run.npy", raw)
    np.save(tmp_path / "one.npy", dataset.to_8bit(raw[5]))  # a single 8-bit frame
    dataset.export_png(classic_tiny_set, tmp_path / "png", progress=False)
    names = [dataset.ALL_CLASSES[k] for k in expected]

    sorted_ = {}
    for name, inputs in {"set": [classic_tiny_set], "h5": [tmp_path / "run.h5"], "npy": [tmp_path / "run.npy"],
                         "png": [tmp_path / "png"]}.items():
        out = tmp_path / f"{name}.csv"
        summary = sort.write_csv(model, [sort.open_source(p) for p in sort.expand_inputs(inputs)], out,
                                 batch_size=7, progress=False)
        rows = read_rows(out)
        assert summary["frames"] == len(rows) == len(raw)
        assert sum(summary["counts"].values()) == len(raw)
        assert summary["kept"] == sum(int(r["diffraction"]) for r in rows)
        sorted_[name] = rows
    for name in ("set", "h5", "npy"):
        assert [int(r["frame"]) for r in sorted_[name]] == list(range(len(raw)))
        assert [r["label"] for r in sorted_[name]] == names
    # the PNGs lie under split/class/NNNNNN.png, each a file of one frame
    png = {int(r["file"].rsplit("/", 1)[1][:-4]): r for r in sorted_["png"]}
    assert all(r["frame"] == "0" for r in sorted_["png"])
    assert [png[i]["label"] for i in range(len(raw))] == names
    assert [png[i]["p_weak"] for i in range(len(raw))] == [r["p_weak"] for r in sorted_["set"]]
    for r in sorted_["set"]:
        p = np.array([float(r[f"p_{c}"]) for c in model.classes])
        assert p.sum() == pytest.approx(1.0, abs=1e-5) and model.classes[p.argmax()] == r["label"]
        assert r["diffraction"] == str(int(r["label"] in ("weak", "good", "strong")))
    # one split of a set: the set's own frame indices
    summary = sort.write_csv(model, [sort.open_source(classic_tiny_set, split="test")], tmp_path / "test.csv",
                             progress=False)
    assert [int(r["frame"]) for r in read_rows(tmp_path / "test.csv")] == list(test)
    assert summary["frames"] == len(test)
    one = read_rows(_sorted(model, tmp_path / "one.npy", tmp_path / "one.csv"))
    assert len(one) == 1 and one[0]["label"] == names[5]


def _sorted(model, path, out):
    sort.write_csv(model, [sort.open_source(path)], out, progress=False)
    return out


def test_frames_the_model_cannot_sort_are_refused_before_anything_is_written(forest, tmp_path):
    model = evaluate.load_model(forest)
    np.save(tmp_path / "big.npy", np.zeros((2, 256, 256), np.uint8))
    with pytest.raises(ValueError, match="frames of 256×256 pixels; the model was trained on 128×128"):
        sort.write_csv(model, [sort.open_source(tmp_path / "big.npy")], tmp_path / "out.csv", progress=False)
    assert not (tmp_path / "out.csv").exists() and not list(tmp_path.glob(".out.csv*"))
    np.save(tmp_path / "float.npy", np.zeros((2, 128, 128), np.float32))
    with pytest.raises(ValueError, match="float32; diffranb reads 8-bit frames"):
        sort.write_csv(model, [sort.open_source(tmp_path / "float.npy")], tmp_path / "out.csv", progress=False)
    assert not list(tmp_path.glob("*.csv")) and not list(tmp_path.glob(".out.csv*"))
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 128, 128), np.uint8))
    with pytest.raises(ValueError, match=r"shape \(2, 2, 128, 128\)"):
        sort.open_source(tmp_path / "cube.npy")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="diffranb sorts HDF5"):
        sort.open_source(tmp_path / "notes.txt")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="not a readable image"):
        sort.open_source(tmp_path / "broken.png")
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"] = np.zeros((2, 128, 128), np.uint16)
        f["b"] = np.zeros((2, 128, 128), np.uint16)
    with pytest.raises(ValueError, match="2 arrays of frames .*--dataset"):
        sort.open_source(tmp_path / "two.h5")
    assert sort.open_source(tmp_path / "two.h5", dataset="b").n_frames == 2
    with pytest.raises(ValueError, match="no dataset 'c'"):
        sort.open_source(tmp_path / "two.h5", dataset="c")
    with pytest.raises(ValueError, match="--split is for sets built by diffranb generate"):
        sort.open_source(tmp_path / "two.h5", split="test")
    with pytest.raises(FileNotFoundError):
        sort.expand_inputs([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no frames under this directory"):
        sort.expand_inputs([tmp_path / "empty"])


def test_a_network_checks_the_size_its_input_bins_from(tmp_path):
    pytest.importorskip("torch")
    from diffranb import deepfreak as dfk

    net = dfk.build_network(8, 5, (32, 32))
    model = dfk.DeepFreakModel(net, dataset.CLASSES, 4, np.zeros((32, 32), np.float32))
    sort.check_frame_size(model, (128, 128))
    sort.check_frame_size(model, (131, 130))  # bins to the same 32 × 32
    with pytest.raises(ValueError, match="frames of 132×128 pixels; the model was trained on 128×128"):
        sort.check_frame_size(model, (132, 128))


def test_sort_command_prints_the_shares_and_never_overwrites(forest, classic_tiny_set, tmp_path, capsys):
    out = tmp_path / "labels.csv"
    assert cli.main(["sort", "--model", str(forest), str(classic_tiny_set), "--out", str(out), "--split", "val",
                     "--no-progress"]) == 0
    printed = capsys.readouterr().out
    with dataset.open_dataset(classic_tiny_set) as ds:
        n_val = len(ds.indices("val"))
    assert f"sorted {n_val} frames of 1 file" in printed and "diffraction" in printed
    assert len(read_rows(out)) == n_val
    before = out.read_bytes()
    assert cli.main(["sort", "--model", str(forest), str(classic_tiny_set), "--out", str(out),
                     "--no-progress"]) == 2
    assert "exists: refusing to overwrite" in capsys.readouterr().err and out.read_bytes() == before
    assert cli.main(["sort", "--model", str(forest), str(classic_tiny_set), "--out", str(tmp_path / "b.csv"),
                     "--batch", "0", "--no-progress"]) == 2
    assert "batch_size = 0" in capsys.readouterr().err and not (tmp_path / "b.csv").exists()


def test_two_processes_write_the_same_rows_in_the_same_order(forest, classic_tiny_set, tmp_path, capsys):
    model = evaluate.load_model(forest)
    with dataset.open_dataset(classic_tiny_set) as ds:
        np.save(tmp_path / "odd.npy", dataset.to_8bit(ds.images[:11]))
    sources = [sort.open_source(classic_tiny_set), sort.open_source(tmp_path / "odd.npy")]
    sort.write_csv(model, sources, tmp_path / "one.csv", batch_size=4, progress=False)
    assert cli.main(["sort", "--model", str(forest), str(classic_tiny_set), str(tmp_path / "odd.npy"), "--out",
                     str(tmp_path / "two.csv"), "--batch", "4", "--workers", "2", "--no-progress"]) == 0
    assert "sorted 91 frames of 2 files" in capsys.readouterr().out
    assert (tmp_path / "two.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()
    with pytest.raises(ValueError, match="give model_dir"):
        next(sort.sort_frames(model, sources, workers=2))
