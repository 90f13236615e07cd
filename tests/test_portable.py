"""The portable model file: numpy-only load and predict, int8 storage, strict loading."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fedbus.broker.layouts import initial_weights, weight_shapes
from fedbus.node.portable import PortableModel, export_portable, inference_steps, transform_rows


def _weights(learner: str, n_in: int, n_out: int, hidden: tuple[int, ...] = ()) -> dict:  # type: ignore[type-arg]
    shapes = weight_shapes(learner, n_in, n_out, hidden)
    rng = np.random.default_rng(3)
    if learner == "mlp":
        return initial_weights("mlp", shapes, 5)
    return {k: rng.standard_normal(v).astype(np.float32) for k, v in shapes.items()}


NORMALIZATION = {
    "mean": [1.0, -2.0, 10.0],
    "std": [2.0, 0.0, 4.0],  # a constant feature: std 0 counts as 1
    "min": [-3.0, -2.0, 0.0],
    "max": [5.0, -2.0, 20.0],
}
PIPELINE = [
    {"step": "impute", "strategy": "median"},
    {"step": "clip", "bounds": {"c": [None, 18.0]}},
    {"step": "standardize"},
]


def test_the_transform_fills_clips_and_scales_with_pooled_statistics() -> None:
    steps = inference_steps(PIPELINE, ["a", "b", "c"], NORMALIZATION)
    rows = np.array([[3.0, np.nan, 30.0], [np.nan, -1.0, 14.0]])
    out = transform_rows(steps, rows)
    expected = np.array(
        [
            [(3 - 1) / 2, (-2 - -2) / 1, (18 - 10) / 4],  # missing b takes the pooled mean
            [(1 - 1) / 2, (-1 - -2) / 1, (14 - 10) / 4],  # c clipped at 18
        ]
    )
    np.testing.assert_allclose(out, expected)
    assert np.isnan(rows[0, 1])  # the input is left alone


@pytest.mark.parametrize(
    ("learner", "n_out", "hidden"),
    [("linear", 1, ()), ("logistic", 1, ()), ("softmax", 4, ()), ("mlp", 4, (8, 5))],
)
def test_export_then_load_predicts_what_the_formula_says(
    tmp_path: Path, learner: str, n_out: int, hidden: tuple[int, ...]
) -> None:
    weights = _weights(learner, 3, n_out, hidden)
    path = tmp_path / "model.npz"
    export_portable(
        path,
        learner=learner,
        weights=weights,
        features=["a", "b", "c"],
        preprocess=PIPELINE,
        normalization=NORMALIZATION,
        version=7,
        task="toy",
    )
    model = PortableModel.load(path)
    assert model.spec["version"] == 7 and model.features == ["a", "b", "c"]
    rows = np.random.default_rng(1).normal(5, 5, (50, 3))
    x = transform_rows(inference_steps(PIPELINE, ["a", "b", "c"], NORMALIZATION), rows)
    if learner == "mlp":
        h = x
        for i in (1, 2):
            h = np.maximum(h @ weights[f"W{i}"] + weights[f"b{i}"], 0)
        logits = h @ weights["W3"] + weights["b3"]
        np.testing.assert_array_equal(model.predict(rows), np.argmax(logits, axis=1))
    else:
        z = x @ weights["W"].astype(np.float64) + weights["b"]
        if learner == "linear":
            np.testing.assert_allclose(model.predict(rows), z[:, 0], rtol=1e-12)
        elif learner == "logistic":
            np.testing.assert_array_equal(model.predict(rows), (z[:, 0] >= 0).astype(np.int64))
            np.testing.assert_allclose(model.decision(rows), 1 / (1 + np.exp(-z[:, 0])), rtol=1e-12)
        else:
            np.testing.assert_array_equal(model.predict(rows), np.argmax(z, axis=1))
            np.testing.assert_allclose(model.decision(rows).sum(axis=1), 1.0, rtol=1e-12)
    # one row, as a 1-D array, answers the same as inside a batch
    np.testing.assert_array_equal(model.predict(rows[4]), model.predict(rows)[4:5])


def test_int8_export_is_smaller_and_within_half_a_step_per_column(tmp_path: Path) -> None:
    weights = _weights("mlp", 64, 10, (64,))
    full, small = tmp_path / "f32.npz", tmp_path / "int8.npz"
    for path, int8 in ((full, False), (small, True)):
        export_portable(
            path, learner="mlp", weights=weights, features=[f"x{i}" for i in range(64)], int8=int8
        )
    assert small.stat().st_size < full.stat().st_size / 2.5
    loaded = PortableModel.load(small)
    assert loaded.spec["quantized"] == "int8"
    for name, weight in weights.items():
        if weight.ndim == 2:
            step = np.abs(weight).max(axis=0) / 127
            assert np.all(np.abs(loaded.weights[name] - weight) <= step / 2 * (1 + 1e-6))
        else:
            np.testing.assert_array_equal(loaded.weights[name], weight)  # biases stay exact


def test_loading_refuses_other_files_and_never_unpickles(tmp_path: Path) -> None:
    other = tmp_path / "other.npz"
    np.savez(other, spec=np.frombuffer(json.dumps({"format": "x"}).encode(), np.uint8))
    with pytest.raises(ValueError, match="format"):
        PortableModel.load(other)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, spec=np.array([{"format": "x"}], dtype=object))
    with pytest.raises(ValueError):
        PortableModel.load(pickled)  # allow_pickle=False: an object array is refused
    good = tmp_path / "good.npz"
    export_portable(good, learner="linear", weights=_weights("linear", 3, 1), features="abc")
    with zipfile.ZipFile(good) as archive:
        names = archive.namelist()
    assert sorted(names) == ["spec.npy", "w.W.npy", "w.b.npy"]
    with pytest.raises(ValueError, match="the model takes 3"):
        PortableModel.load(good).predict(np.zeros((2, 4)))


def test_scaling_without_pooled_statistics_cannot_be_exported(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="normalization"):
        export_portable(
            tmp_path / "m.npz",
            learner="linear",
            weights=_weights("linear", 3, 1),
            features="abc",
            preprocess=[{"step": "standardize"}],
        )


def test_fedbus_predict_reads_named_columns_in_any_order(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from fedbus.broker.cli import main as fedbus

    weights = _weights("linear", 3, 1)
    model_file = tmp_path / "m.npz"
    export_portable(model_file, learner="linear", weights=weights, features=["a", "b", "c"])
    data = tmp_path / "rows.csv"
    data.write_text("label,c,a,b\n9,3,1,2\n9,6,4,\n")  # other order, a label, a gap
    assert fedbus(["predict", "--model", str(model_file), "--input", str(data)]) == 0
    printed = [float(v) for v in capsys.readouterr().out.split()]
    model = PortableModel.load(model_file)
    np.testing.assert_allclose(printed, model.predict(np.array([[1, 2, 3], [4, np.nan, 6]])))
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c\n1,2,x\n")
    with pytest.raises(SystemExit) as stopped:
        fedbus(["predict", "--model", str(model_file), "--input", str(bad)])
    assert stopped.value.code == 2
    assert "bad.csv:2: column 'c' holds 'x', not a number" in capsys.readouterr().err
