"""Stacked models: fitted on another split than their members', saved without pickle, members checked."""

import json
import shutil

import numpy as np
import pytest

from diffranb import classic, cli, dataset, evaluate, features, stack

torch = pytest.importorskip("torch")

from diffranb import deepfreak as dfk  # noqa: E402


@pytest.fixture(scope="module")
def members(tiny_set, tmp_path_factory):
    """Three saved members of the tiny set: a spot forest, a GLCM SVM and a DeepFreak network."""
    root = tmp_path_factory.mktemp("members")
    store = features.FeatureStore(tiny_set, root / "cache", workers=0, progress=False)
    spots = classic.save_model(classic.train(classic.ClassicConfig(extractor="spots", n_estimators=20), store,
                                             n_jobs=1), root / "spots")
    svm = classic.save_model(classic.train(classic.ClassicConfig(classifier="svm", C=8.0), store, n_jobs=1),
                             root / "svm")
    net = root / "deepfreak"
    dfk.train(tiny_set, net, dfk.TrainConfig(topology=8, batch_size=8, binning=2, epochs=1, max_train=24),
              progress=False, threads=1)
    return {"spots": spots, "svm": svm, "deepfreak": net}


def test_classic_scores_are_probabilities_in_the_models_class_order(members, tiny_set):
    forest, svm = evaluate.load_model(members["spots"]), evaluate.load_model(members["svm"])
    with dataset.open_dataset(tiny_set) as ds:
        images = dataset.to_8bit(ds.images[:20])
    for model in (forest, svm):
        p = model.scores(images)
        assert p.shape == (20, len(model.classes)) and np.allclose(p.sum(axis=1), 1.0)
        chosen = np.array([dataset.ALL_CLASSES.index(model.classes[k]) for k in p.argmax(axis=1)])
        np.testing.assert_array_equal(chosen, model.predict(images))
    assert set(np.unique(svm.scores(images))) <= {0.0, 1.0}  # an SVM votes


def test_stacked_model_fits_on_validation_saves_loads_and_predicts_alike(members, tiny_set, tmp_path):
    paths = [members["spots"], members["deepfreak"]]
    model = stack.fit(paths, tiny_set, progress=False)
    with dataset.open_dataset(tiny_set) as ds:
        val, test = ds.indices("val"), ds.indices("test")
        assert model.info["fitted_on"] == "val" and model.info["n_fit"] == len(val)
        assert model.dataset_hash == ds.content_sha256
        images = dataset.to_8bit(ds.images[:])
        # the combiner was fitted on the members' log-probabilities of the validation frames, and no others
        x = stack.member_inputs(model.members, images[val])
        np.testing.assert_allclose(x[:, :5], np.log(np.clip(model.members[0].scores(images[val]), 1e-6, 1)))
        np.testing.assert_allclose(model.combiner[0].mean_, x.mean(axis=0))
        assert model.combiner[-1].coef_.shape[1] == 10
        with pytest.raises(ValueError, match="fitted on this set's val split"):
            evaluate.evaluate_model(model, ds, "val")
        out = stack.save_model(model, tmp_path / "stacked")
        loaded = evaluate.load_model(out)
        streamed = loaded.predict_dataset(ds, test)
    assert loaded.kind == "stacked" and loaded.label() == "RF+SPOTS & DeepFreak"
    predicted = loaded.predict(images[test])
    np.testing.assert_array_equal(predicted, model.predict(images[test]))
    np.testing.assert_array_equal(predicted, streamed)
    p = loaded.scores(images[test])
    assert np.allclose(p.sum(axis=1), 1.0)
    np.testing.assert_array_equal([dataset.ALL_CLASSES.index(loaded.classes[k]) for k in p.argmax(1)], predicted)
    info = json.loads((out / "model.json").read_text())
    # members are found relative to the stacked model, so the two can move together
    assert [(out / m["path"]).resolve() for m in info["members"]] == [p.resolve() for p in paths]
    assert not any(m["path"].startswith("/") for m in info["members"])
    assert [m["kind"] for m in info["members"]] == ["classic", "deepfreak"]


def test_stacked_model_refuses_what_would_mislead(members, tiny_set, tmp_path):
    with pytest.raises(ValueError, match="train split"):
        stack.fit([members["spots"], members["svm"]], tiny_set, split="train", progress=False)
    with pytest.raises(ValueError, match="at least two"):
        stack.fit([members["spots"]], tiny_set, progress=False)
    with pytest.raises(ValueError, match="twice"):
        stack.fit([members["spots"], members["spots"]], tiny_set, progress=False)
    # a member trained on the split the combiner would learn from
    store = features.FeatureStore(tiny_set, tmp_path / "cache", workers=0, progress=False)
    on_val = classic.save_model(classic.train(classic.ClassicConfig(n_estimators=5), store, split="val", n_jobs=1),
                                tmp_path / "on-val")
    with pytest.raises(ValueError, match="val split"):
        stack.fit([members["spots"], on_val], tiny_set, progress=False)
    # a member changed after stacking, in any file it loads, is refused, not silently used
    copy = tmp_path / "spots"
    shutil.copytree(members["spots"], copy)
    out = stack.save_model(stack.fit([copy, members["svm"]], tiny_set, progress=False), tmp_path / "stacked")
    assert stack.load_model(out).members[0].mask is not None
    mask = np.load(copy / "mask.npy")
    np.save(copy / "mask.npy", np.roll(mask, 1, axis=1))
    with pytest.raises(ValueError, match="changed"):
        stack.load_model(out)
    shutil.rmtree(copy)
    with pytest.raises(FileNotFoundError, match="missing"):
        stack.load_model(out)


def test_stacked_combiner_with_untrusted_types_is_refused(members, tiny_set, tmp_path):
    import skops.io as sio
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    out = stack.save_model(stack.fit([members["spots"], members["svm"]], tiny_set, progress=False),
                           tmp_path / "stacked")
    sio.dump(Pipeline([("f", FunctionTransformer(np.abs))]), out / "combiner.skops")
    with pytest.raises(ValueError, match="not trusted"):
        stack.load_model(out)


def test_train_stacked_command_then_evaluate(members, tiny_set, tmp_path, capsys):
    out = tmp_path / "stacked"
    assert cli.main(["train", "stacked", "--data", str(tiny_set), "--members",
                     f"{members['spots']},{members['deepfreak']}", "--out", str(out), "--no-progress"]) == 0
    with dataset.open_dataset(tiny_set) as ds:
        n_val = len(ds.indices("val"))
    assert f"fitted on the {n_val} frames of the val split" in capsys.readouterr().out
    assert json.loads((out / "model.json").read_text())["command"].startswith("diffranb train stacked")
    assert cli.main(["evaluate", "--model", str(out), "--data", str(tiny_set), "--json", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "test" and 0 <= result["accuracy"] <= 1 and result["same_dataset"] is True
    assert cli.main(["train", "stacked", "--data", str(tiny_set), "--members", str(members["spots"]),
                     "--out", str(tmp_path / "one"), "--no-progress"]) == 2
    assert "at least two" in capsys.readouterr().err


def test_a_class_missing_from_the_fitting_split_is_warned_about(members, tiny_set, monkeypatch):
    with dataset.open_dataset(tiny_set) as ds:
        labels = ds.labels.copy()
        val = ds.indices("val")
    strong = dataset.ALL_CLASSES.index("strong")
    labels[val[labels[val] == strong]] = dataset.ALL_CLASSES.index("good")  # no strong frame left in val
    real = dataset.open_dataset

    def relabelled(path):
        opened = real(path)
        opened.labels = labels
        return opened

    monkeypatch.setattr(dataset, "open_dataset", relabelled)
    with pytest.warns(UserWarning, match="no strong frame"):
        stack.fit([members["spots"], members["svm"]], tiny_set, progress=False)


def test_an_svm_member_gives_its_decision_values_and_members_share_their_features(members, tiny_set, tmp_path,
                                                                                  monkeypatch):
    forest, svm = evaluate.load_model(members["spots"]), evaluate.load_model(members["svm"])
    with dataset.open_dataset(tiny_set) as ds:
        images = dataset.to_8bit(ds.images[:30])
    x = stack.member_inputs([forest, svm], images)
    decision = svm.decision(svm.transform(images))
    np.testing.assert_array_equal(x[:, 5:], decision)
    assert len(np.unique(decision)) > 10  # how sure, not a 0-or-1 vote
    np.testing.assert_array_equal([dataset.ALL_CLASSES.index(svm.classes[k]) for k in decision.argmax(axis=1)],
                                  svm.predict(images))
    with pytest.raises(ValueError, match="forest"):
        forest.decision(forest.transform(images))
    # a spot SVM and the spot forest compute the same features: one extraction serves both
    store = features.FeatureStore(tiny_set, tmp_path / "cache", workers=0, progress=False)
    spot_svm = classic.train(classic.ClassicConfig(extractor="spots", classifier="svm", C=8.0), store, n_jobs=1)
    spot_svm.mask = forest.mask
    assert spot_svm.feature_key() == forest.feature_key() != svm.feature_key()
    other_window = classic.ClassicModel(classic.ClassicConfig(extractor="spots", window=(5, 9)), forest.pipeline,
                                        forest.classes, forest.dataset_hash, mask=forest.mask)
    unmasked = classic.ClassicModel(forest.config, forest.pipeline, forest.classes, forest.dataset_hash, mask=None)
    assert len({forest.feature_key(), other_window.feature_key(), unmasked.feature_key()}) == 3
    calls = []
    real = features.extract
    monkeypatch.setattr(features, "extract", lambda kind, imgs, **p: calls.append(kind) or real(kind, imgs, **p))
    shared = stack.member_inputs([forest, spot_svm, svm], images)
    assert sorted(calls) == ["glcm", "spots"]
    np.testing.assert_array_equal(shared[:, :5], x[:, :5])
    np.testing.assert_array_equal(shared[:, 5:10], spot_svm.decision(real("spots", images, window=5,
                                                                          mask=forest.mask)))
    np.testing.assert_array_equal(shared[:, 10:], decision)


def test_a_stack_fitted_on_an_svm_members_vote_is_refused_and_others_still_load(members, tiny_set, tmp_path):
    for names, refused in ((("spots", "svm"), True), (("spots", "deepfreak"), False)):
        out = stack.save_model(stack.fit([members[n] for n in names], tiny_set, progress=False),
                               tmp_path / "-".join(names))
        info = json.loads((out / "model.json").read_text())
        assert info["member_inputs"] == stack.MEMBER_INPUTS == 2
        del info["member_inputs"]  # as saved before SVM members gave their decision values
        (out / "model.json").write_text(json.dumps(info))
        if refused:
            with pytest.raises(ValueError, match="fit it again"):
                stack.load_model(out)
        else:
            assert stack.load_model(out).label() == "RF+SPOTS & DeepFreak"
