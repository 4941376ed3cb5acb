"""Classic pipelines: configuration checks, class weights, training, and saving without pickle."""

import json

import numpy as np
import pytest

from diffranb import classic, dataset, evaluate, features


@pytest.fixture(scope="module")
def store(tiny_set, tmp_path_factory):
    return features.FeatureStore(tiny_set, tmp_path_factory.mktemp("features"), workers=0, progress=False)


@pytest.mark.parametrize("field, value", [("extractor", "hog"), ("distances", ()), ("distances", (1, 3)),
                                          ("angles", (0, 0)), ("points", 6), ("classifier", "knn"), ("C", 0.0),
                                          ("max_features", 2.0), ("max_depth", 0), ("class_weight", "heavy"),
                                          ("window", 4), ("window", ()), ("window", (5, 5)), ("window", (5, 6)),
                                          ("window", True)])
def test_config_refuses_values_outside_the_space(field, value):
    with pytest.raises(ValueError, match=f"ClassicConfig.{field}"):
        classic.ClassicConfig(**{field: value})


def test_config_round_trips_through_json_with_only_its_own_fields():
    config = classic.ClassicConfig(extractor="lbp", points=16, radius=2, classifier="svm", C=8.0, gamma=0.5)
    d = json.loads(json.dumps(config.to_dict()))
    assert set(d) == {"extractor", "points", "radius", "classifier", "C", "gamma", "class_weight", "seed"}
    assert classic.ClassicConfig.from_dict(d) == config
    assert config.label() == "SVM+LBP"
    spots = classic.ClassicConfig(extractor="spots", window=7, n_estimators=10)
    d = json.loads(json.dumps(spots.to_dict()))
    assert d["window"] == 7 and "points" not in d and classic.ClassicConfig.from_dict(d) == spots
    assert spots.label() == "RF+SPOTS"
    both = classic.ClassicConfig(extractor="spots", window=[9, 5], n_estimators=10)
    assert both.window == (5, 9)  # a set of windows, in the order of SPOT_WINDOWS
    d = json.loads(json.dumps(both.to_dict()))
    assert d["window"] == [5, 9] and classic.ClassicConfig.from_dict(d) == both
    assert classic.ClassicConfig(extractor="spots", window=(7,)) == classic.ClassicConfig(extractor="spots", window=7)
    fast = classic.ClassicConfig(extractor="spots", window=["5x2", 5], n_estimators=10)
    d = json.loads(json.dumps(fast.to_dict()))
    assert fast.window == (5, "5x2") and d["window"] == [5, "5x2"] and classic.ClassicConfig.from_dict(d) == fast
    with pytest.raises(ValueError, match="window"):
        classic.ClassicConfig(extractor="spots", window="5x5")


def test_class_weights_follow_the_label_codes():
    assert classic.class_weight("empty-0.35", 5) == {0: 0.35, 1: 0.35, 2: 0.1, 3: 0.1, 4: 0.1}
    assert classic.class_weight("balanced", 5) == "balanced" and classic.class_weight("none", 6) is None
    with pytest.raises(ValueError, match="6"):
        classic.class_weight("empty-0.25", 6)


def test_search_space_grids_are_the_papers():
    assert classic.SVM_C[0] == 2**-5 and classic.SVM_C[-1] == 2**15 and len(classic.SVM_C) == 11
    assert classic.SVM_GAMMA[0] == 2**-15 and classic.SVM_GAMMA[-1] == 2**3 and len(classic.SVM_GAMMA) == 10


@pytest.mark.parametrize("config", [
    classic.ClassicConfig(distances=(1, 2), angles=(0, 90), n_estimators=20, class_weight="balanced"),
    classic.ClassicConfig(extractor="lbp", points=8, radius=1, classifier="svm", C=2.0, gamma=2**-3),
    classic.ClassicConfig(extractor="sift", words=10, n_estimators=10, max_depth=4),
    classic.ClassicConfig(extractor="spots", window=7, n_estimators=10),
    classic.ClassicConfig(extractor="spots", window=(5, 9), n_estimators=10),
], ids=lambda c: c.label() + (f"-{c.window}" if c.extractor == "spots" else ""))
def test_saved_model_loads_without_pickle_and_predicts_the_same(config, store, tiny_set, tmp_path):
    model = classic.train(config, store, n_jobs=1)
    path = classic.save_model(model, tmp_path / "model")
    info = json.loads((path / "model.json").read_text())
    assert info["kind"] == "classic" and info["dataset_hash"] == store.content_sha256
    assert info["classes"] == list(dataset.CLASSES) and "diffranb_version" in info
    loaded = evaluate.load_model(path)
    with dataset.open_dataset(tiny_set) as ds:
        test = ds.indices("test")
        images = np.stack([ds.image8(i) for i in test])
        streamed = loaded.predict_dataset(ds, test, cache_dir=store.dir.parent, workers=0)
    predicted = loaded.predict(images)
    assert predicted.dtype == np.int64 and predicted.shape == (len(test),)
    np.testing.assert_array_equal(predicted, model.predict(images))
    np.testing.assert_array_equal(predicted, streamed)
    # the features' version travels with the model: one made with features computed otherwise is refused
    assert info["extractor_version"] == features.EXTRACTOR_VERSIONS[config.extractor]
    for made in (info["extractor_version"] + 1, None):
        changed = {k: v for k, v in info.items() if k != "extractor_version"}
        (path / "model.json").write_text(json.dumps(changed | ({} if made is None else {"extractor_version": made})))
        if made is None and info["extractor_version"] == 1:  # written before the field, with unchanged features
            assert classic.load_model(path).config == config
        else:
            with pytest.raises(ValueError, match="features of (version|an earlier).*retrain"):
                classic.load_model(path)
    (path / "model.json").write_text(json.dumps(info))
    if config.extractor == "spots":  # the detector mask travels with the model, and cannot be lost quietly
        assert (path / "mask.npy").exists() and info["masked_pixels"] == int(store.mask().sum())
        np.testing.assert_array_equal(loaded.mask, store.mask())
        np.save(path / "mask.npy", store.mask()[:3, :3])
        with pytest.raises(ValueError, match="mask"):
            classic.load_model(path)
        (path / "mask.npy").unlink()
        with pytest.raises(FileNotFoundError, match="mask.npy is missing"):
            classic.load_model(path)
    else:
        assert loaded.mask is None and not (path / "mask.npy").exists()
        np.save(path / "mask.npy", np.zeros((4, 4), bool))
        with pytest.raises(ValueError, match="holds no detector mask"):
            classic.load_model(path)


def test_spot_model_uses_its_own_mask_on_other_sets(store, tiny_set, tmp_path):
    model = classic.train(classic.ClassicConfig(extractor="spots", n_estimators=10), store, n_jobs=1)
    model.mask = np.zeros_like(model.mask)
    model.mask[:, :40] = True  # not the set's mask: predictions must use this one, in memory and from the cache
    with dataset.open_dataset(tiny_set) as ds:
        every = np.arange(len(ds))
        images = dataset.to_8bit(ds.images[:])
        streamed = model.predict_dataset(ds, every, cache_dir=store.dir.parent, workers=0)
    np.testing.assert_array_equal(model.transform(images), features.extract("spots", images, mask=model.mask))
    np.testing.assert_array_equal(streamed, model.predict(images))


def test_load_refuses_untrusted_types(store, tmp_path):
    import skops.io as sio
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    model = classic.train(classic.ClassicConfig(n_estimators=5), store, n_jobs=1)
    path = classic.save_model(model, tmp_path / "model")
    sio.dump(Pipeline([("f", FunctionTransformer(np.abs))]), path / "pipeline.skops")
    with pytest.raises(ValueError, match="not trusted"):
        classic.load_model(path)


def test_training_is_seeded(store):
    config = classic.ClassicConfig(n_estimators=15, max_features=0.5)
    a, b = classic.train(config, store, n_jobs=1), classic.train(config, store, n_jobs=2)
    x = store.features("glcm")
    np.testing.assert_array_equal(a.pipeline.predict_proba(x), b.pipeline.predict_proba(x))


def test_decision_values_of_a_two_class_svm_sit_in_their_classes_columns():
    rng = np.random.default_rng(1)
    x = np.vstack([rng.normal(0.0, 1.0, (30, 4)), rng.normal(2.0, 1.0, (30, 4))])
    codes = np.repeat([0, 3], 30)  # blank and good only
    config = classic.ClassicConfig(classifier="svm", C=1.0)
    pipeline = classic.make_pipeline(config).fit(x, codes)
    model = classic.ClassicModel(config, pipeline, dataset.CLASSES, "0" * 64)
    values = model.decision(x)
    d = pipeline.decision_function(x)  # one column: positive for the second class, good
    np.testing.assert_array_equal(values[:, 3], d)
    np.testing.assert_array_equal(values[:, 0], -d)
    assert not values[:, [1, 2, 4]].any()
    np.testing.assert_array_equal(np.where(values[:, 3] > values[:, 0], 3, 0), pipeline.predict(x))
