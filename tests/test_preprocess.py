"""The preprocessing pipeline: each step on hand-computed rows, strict spec parsing, purity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from fedbus.broker.errors import ConfigError
from fedbus.kernels.feature_stats import feature_stats
from fedbus.node.preprocess import GlobalStats, Pipeline
from fedbus.node.sources import Table, from_arrays, read_csv

DIRTY = Path(__file__).parent / "data" / "dirty"
NAN = np.nan
NAMES = ("temp", "rpm")


def run(steps: list[dict[str, Any]], table: Table, stats: GlobalStats | None = None) -> tuple:
    return Pipeline.from_spec(steps, table.feature_names).apply(table, stats)


def stats_of(
    mean: list[float], std: list[float], low: list[float], high: list[float]
) -> GlobalStats:
    return GlobalStats(count=[10] * len(mean), mean=mean, std=std, min=low, max=high)


# ---------------------------------------------------------------- steps


GAPS = [[1, NAN], [2, 4], [NAN, 8], [9, NAN], [NAN, 9]]  # col 0: 1 2 9, col 1: 4 8 9


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        ({"strategy": "mean"}, [[1, 7], [2, 4], [4, 8], [9, 7], [4, 9]]),
        ({"strategy": "median"}, [[1, 8], [2, 4], [2, 8], [9, 8], [2, 9]]),
        ({"strategy": "constant", "value": -1}, [[1, -1], [2, 4], [-1, 8], [9, -1], [-1, 9]]),
    ],
)
def test_impute_fills_each_column_from_its_own_values(
    step: dict[str, Any], expected: list[list[float]]
) -> None:
    table = from_arrays(GAPS, [0, 1, 2, 3, 4], NAMES)

    result, report = run([{"step": "impute", **step}], table)

    np.testing.assert_array_equal(result.X, expected)
    np.testing.assert_array_equal(result.y, [0, 1, 2, 3, 4])
    assert report == {"0:impute": {"cells_filled": 4, "columns_without_values": 0}}


@pytest.mark.parametrize(("strategy", "fill"), [("mean", 0.0), ("median", 0.0), ("constant", 5.0)])
def test_impute_of_a_column_without_values(strategy: str, fill: float) -> None:
    step = {"step": "impute", "strategy": strategy} | ({"value": 5} if fill else {})
    table = from_arrays([[1, NAN], [3, NAN]], None, NAMES)

    result, report = run([step], table)

    np.testing.assert_array_equal(result.X, [[1, fill], [3, fill]])
    assert report == {"0:impute": {"cells_filled": 2, "columns_without_values": 1}}


def test_drop_missing_drops_rows_and_their_labels() -> None:
    table = from_arrays([[1, 2], [NAN, 3], [4, NAN], [5, 6]], [0, 1, 2, 3], NAMES)

    result, report = run([{"step": "drop_missing"}], table)

    np.testing.assert_array_equal(result.X, [[1, 2], [5, 6]])
    np.testing.assert_array_equal(result.y, [0, 3])
    assert report == {"0:drop_missing": {"rows_dropped": 2}}


def test_drop_duplicates_keeps_the_first_of_equal_features_and_label() -> None:
    table = read_csv(DIRTY / "duplicate_rows.csv", "label")

    result, report = run([{"step": "drop_duplicates"}], table)

    # rows 1, 5 repeat row 0; row 3 repeats row 2 (missing matches missing);
    # row 4 has row 0's features but another label; 0.0 (row 7) equals -0.0 (row 6)
    np.testing.assert_array_equal(result.X, [[21, 40], [22, NAN], [21, 40], [-0.0, 41]])
    np.testing.assert_array_equal(result.y, [0, 1, 1, 0])
    assert np.signbit(result.X[3, 0])  # the first of the two stayed
    assert report == {"0:drop_duplicates": {"rows_dropped": 4}}


def test_drop_duplicates_of_unlabelled_rows_compares_features_only() -> None:
    table = read_csv(DIRTY / "duplicate_rows.csv", None, ["temp", "humidity"])

    result, report = run([{"step": "drop_duplicates"}], table)

    np.testing.assert_array_equal(result.X, [[21, 40], [22, NAN], [-0.0, 41]])
    assert result.y is None
    assert report == {"0:drop_duplicates": {"rows_dropped": 5}}


def test_drop_duplicates_without_features_compares_labels() -> None:
    labelled = Table(np.zeros((3, 0)), np.array([1.0, 1.0, 2.0]), ())
    result, report = run([{"step": "drop_duplicates"}], labelled)
    np.testing.assert_array_equal(result.y, [1, 2])
    unlabelled = Table(np.zeros((3, 0)), None, ())
    assert run([{"step": "drop_duplicates"}], unlabelled)[0].X.shape == (1, 0)
    nothing = Table(np.zeros((0, 2)), np.zeros(0), NAMES)
    _, report = run([{"step": "drop_duplicates"}], nothing)
    assert report == {"0:drop_duplicates": {"rows_dropped": 0}}


def test_clip_clamps_named_features_and_counts_cells() -> None:
    table = from_arrays([[-50, 100], [20, 5000], [90, NAN], [30, 2000]], None, NAMES)
    step = {"step": "clip", "bounds": {"temp": [-40, 85], "rpm": [None, 3000]}}

    result, report = run([step], table)

    np.testing.assert_array_equal(result.X, [[-40, 100], [20, 3000], [85, NAN], [30, 2000]])
    assert report == {"0:clip": {"cells_clipped": 3}}


@pytest.mark.parametrize(
    ("step", "rows", "counts"),
    [
        # col 0: median 3, MAD 1, z = 0.6745 * (-2, -1, 0, 1, 97); col 1 has MAD 0
        ({}, [0, 1, 2, 3], {"rows_flagged": 1, "rows_dropped": 1}),
        ({"threshold": 1.0}, [1, 2, 3], {"rows_flagged": 2, "rows_dropped": 2}),
        ({"action": "keep"}, [0, 1, 2, 3, 4], {"rows_flagged": 1, "rows_dropped": 0}),
        ({"threshold": 66.0}, [0, 1, 2, 3, 4], {"rows_flagged": 0, "rows_dropped": 0}),
    ],
)
def test_robust_zscore_by_hand(step: dict[str, Any], rows: list[int], counts: dict) -> None:
    X = np.array([[1, 5], [2, 5], [3, 5], [4, 5], [100, 5]], dtype=float)
    table = from_arrays(X, np.arange(5), NAMES)

    result, report = run([{"step": "robust_zscore", **step}], table)

    np.testing.assert_array_equal(result.X, X[rows])
    np.testing.assert_array_equal(result.y, rows)
    assert report == {"0:robust_zscore": {**counts, "features_skipped": 1}}


def test_robust_zscore_flags_exactly_the_planted_outliers() -> None:
    rng = np.random.default_rng(42)
    normal = np.clip(rng.normal(0, 1, (200, 3)), -2.5, 2.5)
    normal[rng.random((200, 3)) < 0.05] = NAN  # gaps are ignored, never flagged
    planted = np.clip(rng.normal(0, 1, (5, 3)), -2.5, 2.5)
    planted[[0, 1, 2, 3, 4], [0, 1, 2, 0, 1]] = [9.0, -8.0, 12.0, -10.0, 7.0]
    where = np.sort(rng.choice(205, 5, replace=False))
    X = np.empty((205, 3))
    is_planted = np.zeros(205, dtype=bool)
    is_planted[where] = True
    X[is_planted], X[~is_planted] = planted, normal
    table = from_arrays(X, np.arange(205.0), ("a", "b", "c"))

    kept, report = run([{"step": "robust_zscore", "threshold": 3.5, "action": "drop"}], table)

    np.testing.assert_array_equal(kept.y, np.flatnonzero(~is_planted))
    np.testing.assert_array_equal(kept.X, normal)
    counts = {"rows_flagged": 5, "rows_dropped": 5, "features_skipped": 0}
    assert report == {"0:robust_zscore": counts}


def test_standardize_with_global_statistics() -> None:
    table = from_arrays([[3, 12], [NAN, 10], [-1, 7]], None, NAMES)
    stats = stats_of(mean=[1, 10], std=[2, 0], low=[0, 0], high=[0, 0])

    result, report = run([{"step": "standardize"}], table, stats)

    np.testing.assert_array_equal(result.X, [[1, 2], [NAN, 0], [-1, -3]])  # std 0 counts as 1
    assert report == {"0:standardize": {"features_without_spread": 1}}


def test_minmax_with_global_statistics() -> None:
    table = from_arrays([[5, 5], [10, 6], [0, NAN]], None, NAMES)
    stats = stats_of(mean=[0, 0], std=[1, 1], low=[0, 5], high=[10, 5])

    result, report = run([{"step": "minmax"}], table, stats)

    np.testing.assert_array_equal(result.X, [[0.5, 0], [1, 1], [0, NAN]])  # range 0 counts as 1
    assert report == {"0:minmax": {"features_without_spread": 1}}


@pytest.mark.parametrize("step", ["standardize", "minmax"])
def test_scaling_without_statistics_is_a_config_error(step: str) -> None:
    table = from_arrays([[1.0, 2.0]], None, NAMES)
    pipeline = Pipeline.from_spec([{"step": "drop_missing"}, {"step": step}], NAMES)
    message = f"^{step} needs global statistics"

    with pytest.raises(ConfigError, match=message):
        pipeline.apply(table)
    with pytest.raises(ConfigError, match=message):
        pipeline.apply_scaling(table, None)
    wrong_width = stats_of([0.0] * 3, [1.0] * 3, [0.0] * 3, [1.0] * 3)
    with pytest.raises(ConfigError, match=f"{step}: statistics of 3 features for 2 features"):
        pipeline.apply(table, wrong_width)


# ---------------------------------------------------------------- the pipeline

EXAMPLE: list[dict[str, Any]] = [
    {"step": "impute", "strategy": "median"},
    {"step": "drop_missing"},
    {"step": "drop_duplicates"},
    {"step": "clip", "bounds": {"temp": [-40, 85]}},
    {"step": "robust_zscore", "threshold": 3.5, "action": "drop"},
    {"step": "standardize"},
]


def test_clean_publish_scale_equals_apply_in_one_go() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(20, 5, (60, 2))
    X[::7, 0], X[3, 0], X[10] = NAN, 300.0, X[9]
    table = from_arrays(X, rng.integers(0, 2, 60), NAMES)
    pipeline = Pipeline.from_spec(EXAMPLE, NAMES)
    assert pipeline.has_scaling and pipeline.scaling_position == 5

    cleaned, before = pipeline.apply_until_scaling(table)
    pooled = feature_stats(cleaned.X).to_global()  # a fleet of one node
    scaled, after = pipeline.apply_scaling(cleaned, pooled)
    at_once, report = pipeline.apply(table, pooled)

    assert list(before) == ["0:impute", "1:drop_missing", "2:drop_duplicates", "3:clip"] + [
        "4:robust_zscore"
    ]
    assert list(after) == ["5:standardize"]
    assert report == {**before, **after}
    assert before["2:drop_duplicates"] == {"rows_dropped": 1}
    assert before["3:clip"] == {"cells_clipped": 1}
    np.testing.assert_array_equal(at_once.X, scaled.X)
    np.testing.assert_array_equal(at_once.y, scaled.y)
    np.testing.assert_allclose(scaled.X.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(scaled.X.std(axis=0), 1.0, rtol=1e-12)


def test_steps_after_the_scaling_step_run_with_it() -> None:
    pipeline = Pipeline.from_spec(
        [{"step": "standardize"}, {"step": "clip", "bounds": {"temp": [-1, 1]}}], NAMES
    )
    table = from_arrays([[0.0, 0.0], [10.0, 0.0]], None, NAMES)

    cleaned, before = pipeline.apply_until_scaling(table)
    scaled, after = pipeline.apply_scaling(cleaned, stats_of([0, 0], [2, 1], [0, 0], [0, 0]))

    assert before == {}
    np.testing.assert_array_equal(cleaned.X, table.X)
    np.testing.assert_array_equal(scaled.X, [[0, 0], [1, 0]])
    assert after == {
        "0:standardize": {"features_without_spread": 0},
        "1:clip": {"cells_clipped": 1},
    }


def test_without_a_scaling_step_no_statistics_are_needed() -> None:
    pipeline = Pipeline.from_spec([{"step": "drop_missing"}], NAMES)
    table = from_arrays([[1.0, NAN], [2.0, 3.0]], None, NAMES)

    result, report = pipeline.apply(table)

    assert not pipeline.has_scaling and pipeline.scaling_position is None
    np.testing.assert_array_equal(result.X, [[2, 3]])
    assert pipeline.apply_scaling(result, None) == (result, {})


def test_dirty_csv_end_to_end() -> None:
    table = read_csv(DIRTY / "sensor_log.csv", "label", ["temp", "humidity"])
    pipeline = Pipeline.from_spec(
        [
            {"step": "impute", "strategy": "median"},
            {"step": "drop_duplicates"},
            {"step": "clip", "bounds": {"temp": [-40, 85]}},
            {"step": "standardize"},
        ],
        table.feature_names,
    )

    cleaned, report = pipeline.apply_until_scaling(table)

    # medians of the present values: temp 22.5 (of 20 21 22 23 23 250), humidity 41.5;
    # the repeated 10:02 reading dropped; the 250 degree glitch clipped to 85
    expected = np.array([[21, 40], [22, 41.5], [23, 44], [22.5, 42], [85, 41], [20, 39]])
    np.testing.assert_array_equal(cleaned.X, expected)
    np.testing.assert_array_equal(cleaned.y, [0, 0, 1, 0, 1, 0])
    assert report == {
        "0:impute": {"cells_filled": 2, "columns_without_values": 0},
        "1:drop_duplicates": {"rows_dropped": 1},
        "2:clip": {"cells_clipped": 1},
    }
    scaled, more = pipeline.apply_scaling(cleaned, feature_stats(cleaned.X).to_global())
    standardized = (expected - expected.mean(axis=0)) / expected.std(axis=0)
    np.testing.assert_allclose(scaled.X, standardized, rtol=1e-12, atol=1e-15)
    assert more == {"3:standardize": {"features_without_spread": 0}}


def test_apply_never_writes_into_its_input() -> None:
    X = np.array([[1, NAN], [1, NAN], [500, 3], [2, 4], [3, 5], [2, 6]], dtype=float)
    table = from_arrays(X, [0, 0, 1, 0, 1, 0], NAMES)
    assert table.y is not None
    table.X.setflags(write=False)  # any write into the input now raises
    table.y.setflags(write=False)
    pooled = stats_of([1, 1], [2, 2], [0, 0], [9, 9])
    spec = [*EXAMPLE[:1], *EXAMPLE[2:4], {"step": "robust_zscore", "threshold": 1.0}]
    pipelines: list[list[dict[str, Any]]] = [
        [],
        [*spec, {"step": "standardize"}],
        [*spec, {"step": "minmax"}],
    ]

    for steps in pipelines:
        result, _ = run(steps, table, pooled)
        assert not np.shares_memory(result.X, table.X)
        assert result.y is not None and not np.shares_memory(result.y, table.y)

    np.testing.assert_array_equal(table.X, X)
    np.testing.assert_array_equal(table.y, [0, 0, 1, 0, 1, 0])


def test_the_rows_must_have_the_pipelines_features() -> None:
    pipeline = Pipeline.from_spec([], NAMES)
    with pytest.raises(ConfigError, match="the pipeline is for features"):
        pipeline.apply(from_arrays([[1.0, 2.0]], None, ("rpm", "temp")))


# ---------------------------------------------------------------- the spec


def test_to_spec_is_canonical_and_round_trips_through_msgpack() -> None:
    spec = [
        {"step": "impute", "strategy": "constant", "value": 0},
        {"step": "clip", "bounds": {"rpm": [None, 3000], "temp": [-40, None]}},
        {"step": "robust_zscore"},
        {"step": "minmax"},
    ]
    pipeline = Pipeline.from_spec(spec, NAMES)

    canonical = pipeline.to_spec()

    assert canonical == [
        {"step": "impute", "strategy": "constant", "value": 0.0},
        {"step": "clip", "bounds": {"temp": [-40.0, None], "rpm": [None, 3000.0]}},
        {"step": "robust_zscore", "threshold": 3.5, "action": "drop"},
        {"step": "minmax"},
    ]
    assert list(canonical[1]["bounds"]) == ["temp", "rpm"]  # feature order
    wire = msgpack.unpackb(msgpack.packb(canonical))
    assert Pipeline.from_spec(wire, NAMES) == pipeline
    assert Pipeline.from_spec(wire, NAMES).to_spec() == canonical


@pytest.mark.parametrize(
    "spec",
    [
        EXAMPLE,
        [],
        [{"step": "impute", "strategy": "mean"}, {"step": "drop_missing"}, {"step": "minmax"}],
        [{"step": "robust_zscore", "threshold": 2.0, "action": "keep"}, {"step": "standardize"}],
    ],
)
def test_canonical_specs_round_trip_unchanged(spec: list[dict[str, Any]]) -> None:
    pipeline = Pipeline.from_spec(spec, NAMES)
    assert pipeline.to_spec() == spec
    assert Pipeline.from_spec(pipeline.to_spec(), NAMES) == pipeline


def step(**fields: Any) -> list[dict[str, Any]]:
    return [{"step": "drop_missing"}, fields]  # at position 1, to check positions are named


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"step": "impute"}, r"^preprocess must be a list of steps, got dict$"),
        ("standardize", "must be a list of steps, got str"),
        (None, "must be a list of steps, got NoneType"),
        ([{"step": "drop_missing"}] * 33, r"^preprocess has 33 steps, at most 32 are allowed$"),
        (["impute"], r"^preprocess step 0: must be a map with a 'step', got str$"),
        ([{}], r"^preprocess step 0: missing 'step'"),
        (step(step="normalise"), r"^preprocess step 1: unknown step 'normalise' \(known: impute, "),
        (step(step=["impute"]), r"unknown step \['impute'\]"),
        (step(step="x" * 10_000), r"unknown step 'x{10,}\.\.\.x+' \(known"),
        (step(step="drop_missing", how="any"), r"\(drop_missing\): unknown key 'how' \(allowed: n"),
        (
            [{"step": "impute", "strategy": "mean", 1: 2}],
            r"^preprocess step 0 \(impute\): unknown key 1 \(allowed: strategy, value\)$",
        ),
        (step(step="robust_zscore", threshold=NAN), r"^preprocess step 1 \(robust_zscore\): thr"),
        (step(step="robust_zscore", threshold=NAN), "threshold must be a finite number, got nan"),
        (step(step="robust_zscore", threshold=np.inf), "must be a finite number, got inf"),
        (step(step="robust_zscore", threshold=10**400), "threshold must be a finite number"),
        (step(step="robust_zscore", threshold=0), r"threshold must be > 0, got 0\.0$"),
        (step(step="robust_zscore", threshold=-1.5), r"threshold must be > 0, got -1\.5$"),
        (step(step="robust_zscore", threshold="3.5"), r"threshold must be a number, got '3\.5'$"),
        (step(step="robust_zscore", threshold=True), "threshold must be a number, got True"),
        (step(step="robust_zscore", action="delete"), "action must be one of drop, keep, got 'de"),
        (step(step="impute"), r"\(impute\): missing 'strategy' \(mean, median or constant\)"),
        (step(step="impute", strategy="mode"), "strategy must be one of mean, median, constant"),
        (step(step="impute", strategy="constant"), "strategy 'constant' needs a 'value'"),
        (step(step="impute", strategy="constant", value=NAN), "value must be a finite number"),
        (step(step="impute", strategy="constant", value=None), "value must be a number, got None"),
        (step(step="impute", strategy="mean", value=0), "'value' applies only to strategy 'const"),
        (step(step="clip"), r"'bounds' must be a map of feature name to \[low, high\]"),
        (step(step="clip", bounds=[[-40, 85]]), "'bounds' must be a map"),
        (
            step(step="clip", bounds={"pressure": [0, 1]}),
            r"^preprocess step 1 \(clip\): unknown feature 'pressure' "
            r"\(features: \['temp', 'rpm'\]\)$",
        ),
        (step(step="clip", bounds={"temp": 85}), r"bounds of 'temp' must be \[low, high\], got 85"),
        (step(step="clip", bounds={"temp": [1, 2, 3]}), r"must be \[low, high\], got \[1, 2, 3\]"),
        (step(step="clip", bounds={"temp": ["low", 85]}), "lower bound of 'temp' must be a number"),
        (step(step="clip", bounds={"temp": [0, NAN]}), "upper bound of 'temp' must be a finite"),
        (step(step="clip", bounds={"temp": [85, -40]}), r"reversed: 85\.0 > -40\.0"),
        (
            step(step="clip", bounds={"temp": [[[[[[[[1]]]]]]], 2]}),  # nested 7 deep
            r"lower bound of 'temp' must be a number, got \[{7}\.\.\.\]{7}$",
        ),
        (
            [{"step": "standardize"}, {"step": "minmax"}],
            r"^preprocess step 1: a second scaling step",
        ),
    ],
)
def test_bad_specs_are_config_errors_naming_the_step(spec: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        Pipeline.from_spec(spec, NAMES)
    assert len(str(caught.value)) < 300  # untrusted input is quoted, not echoed whole


def test_feature_names_must_be_unique_strings() -> None:
    with pytest.raises(ConfigError, match="feature names must be unique strings"):
        Pipeline.from_spec([], ["a", "a"])
    with pytest.raises(ConfigError, match="feature names must be unique strings"):
        Pipeline.from_spec([], ["a", 1])  # type: ignore[list-item]
