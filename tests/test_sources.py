"""Data sources: dirty CSV files, arrays, and the bounded window of a sensor stream."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbus.broker.errors import DataError
from fedbus.node.sources import (
    LoadReport,
    StreamWindow,
    Table,
    from_arrays,
    read_csv,
    read_csv_with_report,
)

DIRTY = Path(__file__).parent / "data" / "dirty"
NAN = np.nan


def write(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------- read_csv


def test_every_missing_token_becomes_nan() -> None:
    table, report = read_csv_with_report(DIRTY / "missing_tokens.csv", "label")

    # "", NA, N/A, NaN, nan, null, ? and " NA " (blanks stripped) are all missing;
    # " 49 " is a number with blanks around it.
    expected_temp = [21.5, NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN, 22.0]
    np.testing.assert_array_equal(table.X[:, 0], expected_temp)
    np.testing.assert_array_equal(table.X[:, 1], np.arange(40.0, 50.0))
    np.testing.assert_array_equal(table.y, [0, 0, 1, 1, 0, 0, 1, 1, 0, 1])
    assert table.feature_names == ("temp", "humidity")
    assert table.X.dtype == np.float64 and table.X.flags.c_contiguous
    assert report == LoadReport(rows_read=10, rows_without_label=0)


def test_duplicate_rows_are_read_as_they_are() -> None:
    table = read_csv(DIRTY / "duplicate_rows.csv", "label")

    # dropping them is the pipeline's job (test_preprocess), not the reader's
    expected = [[21, 40], [21, 40], [22, NAN], [22, NAN], [21, 40], [21, 40], [-0.0, 41], [0, 41]]
    np.testing.assert_array_equal(table.X, expected)
    np.testing.assert_array_equal(table.y, [0, 0, 1, 1, 1, 0, 0, 0])


def test_a_string_in_a_numeric_column_names_file_line_and_column() -> None:
    path = DIRTY / "string_in_numeric.csv"
    with pytest.raises(DataError) as caught:
        read_csv(path, "label")
    assert str(caught.value) == f"{path}:7: column 'temp' holds 'abc', not a number"


def test_a_short_row_names_its_line() -> None:
    path = DIRTY / "short_row.csv"
    with pytest.raises(DataError) as caught:
        read_csv(path, "label")
    assert str(caught.value) == f"{path}:4: 2 cells, the header has 3"


def test_rows_without_a_label_are_dropped_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    path = DIRTY / "missing_label.csv"
    table, report = read_csv_with_report(path, "label")

    np.testing.assert_array_equal(table.X, [[21.0, 40], [22.0, 42], [23.0, 44]])
    np.testing.assert_array_equal(table.y, [0, 1, 0])
    assert report == LoadReport(rows_read=5, rows_without_label=2)
    with caplog.at_level("WARNING", logger="fedbus.node.sources"):
        assert len(read_csv(path, "label").X) == 3
    assert "skipped 2 of 5 rows without a label 'label'" in caplog.text


def test_unlabelled_read_keeps_every_row_and_every_column() -> None:
    table = read_csv(DIRTY / "missing_label.csv", label=None)

    assert table.y is None
    assert table.feature_names == ("temp", "humidity", "label")
    np.testing.assert_array_equal(table.X[:, 2], [0, NAN, 1, NAN, 0])


def test_features_pick_and_order_columns_and_others_are_never_parsed() -> None:
    # "time" holds text; it is neither a feature nor the label, so it is not read.
    table, report = read_csv_with_report(DIRTY / "sensor_log.csv", "label", ["humidity", "temp"])

    assert table.feature_names == ("humidity", "temp")
    expected = [[40, 21], [NAN, 22], [44, 23], [44, 23], [42, NAN], [41, 250], [39, 20]]
    np.testing.assert_array_equal(table.X, expected)
    np.testing.assert_array_equal(table.y, [0, 0, 1, 1, 0, 1, 0])
    assert report == LoadReport(rows_read=8, rows_without_label=1)  # the blank line is no row


def test_a_text_column_read_as_a_feature_is_an_error() -> None:
    path = DIRTY / "sensor_log.csv"
    with pytest.raises(DataError, match=f"^{path}:2: column 'time' holds '2024-05-01T10:00'"):
        read_csv(path, "label")


@pytest.mark.parametrize(
    ("text", "label", "features", "message"),
    [
        ("", "label", None, r"data\.csv: empty file or blank first line, expected a header row"),
        ("a,b,a\n1,2,3\n", None, None, r"data\.csv: column 'a' appears twice"),
        ("a,,b\n1,2,3\n", None, None, r"data\.csv: column 2 of the header has no name"),
        ("a,b\n1,2\n", "label", None, r"data\.csv: no label column 'label' in header"),
        ("a,b\n1,2\n", "b", ["a", "c"], r"data\.csv: no columns \['c'\] in header"),
        ("a,b\n1,2\n", "b", ["a", "a"], r"data\.csv: feature 'a' appears twice"),
        ("a,b\n1,2\n", "b", ["a", "b"], r"data\.csv: the label column 'b' is also listed"),
        ("a,b\n1,2\n3,4,5\n", "b", None, r"data\.csv:3: 3 cells, the header has 2"),
        ("a,b\n1,inf\n", None, None, r"data\.csv:2: column 'b' holds 'inf', not a finite number"),
        ("a,b\n1,-1e999\n", None, None, r"data\.csv:2: column 'b' holds '-1e999', not a finite"),
        ("a,b\n1,2\n3,x\n", "b", None, r"data\.csv:3: column 'b' holds 'x', not a number"),
        # a quoted cell spanning lines 2-3: the next record is line 4
        ('note,b\n"two\nlines",3\n4,y\n', None, ["b"], r"data\.csv:4: column 'b' holds 'y'"),
        ("a,b\n1," + "9" * 80 + "z\n", None, None, r"holds '9{40}\.\.\.', not a number"),
    ],
)
def test_bad_files_are_data_errors_naming_where(
    tmp_path: Path, text: str, label: str | None, features: list[str] | None, message: str
) -> None:
    with pytest.raises(DataError, match=message):
        read_csv(write(tmp_path, text), label, features)


def test_unreadable_files_are_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing.csv: cannot read"):
        read_csv(tmp_path / "missing.csv", "label")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"a,b\n\xff\xfe,1\n")
    with pytest.raises(DataError, match="binary.csv: not UTF-8 text"):
        read_csv(binary, None)


def test_header_only_gives_an_empty_table_of_the_right_width(tmp_path: Path) -> None:
    table = read_csv(write(tmp_path, "\ufeffa, b ,label\n"), "label")  # BOM and blanks

    assert table.feature_names == ("a", "b")
    assert table.X.shape == (0, 2) and table.y is not None and table.y.shape == (0,)


# ---------------------------------------------------------------- from_arrays


def test_from_arrays_copies_to_float64_with_default_names() -> None:
    X = np.array([[1, 2], [3, 4]], dtype=np.float32)
    y = np.array([0, 1], dtype=np.int64)

    table = from_arrays(X, y)
    X[0, 0] = 99

    np.testing.assert_array_equal(table.X, [[1, 2], [3, 4]])
    assert table.X.dtype == np.float64 and table.y is not None and table.y.dtype == np.float64
    assert table.feature_names == ("x0", "x1")
    assert from_arrays([[1.0, NAN]], None, ["a", "b"]).feature_names == ("a", "b")


@pytest.mark.parametrize(
    ("X", "y", "names", "message"),
    [
        ([1.0, 2.0], None, None, r"X must be 2-D"),
        ([[1.0], [2.0]], [1.0], None, r"y must have shape \(2,\)"),
        ([[1.0], [2.0]], [[1.0], [2.0]], None, r"y must have shape \(2,\)"),
        ([[1.0]], [NAN], None, "missing or infinite label"),
        ([[np.inf]], None, None, r"X holds an infinite value at \(0, 0\)"),
        ([["a"]], None, None, "X is not numeric"),
        ([[1.0, 2.0]], None, ["a"], "need 2 feature names"),
        ([[1.0, 2.0]], None, ["a", "a"], "feature 'a' appears twice"),
    ],
)
def test_from_arrays_refuses_bad_input(X: object, y: object, names: object, message: str) -> None:
    with pytest.raises(DataError, match=message):
        from_arrays(X, y, names)  # type: ignore[arg-type]


def test_table_checks_its_shapes() -> None:
    with pytest.raises(ValueError, match="float64"):
        Table(np.zeros((2, 2), np.float32), None, ("a", "b"))
    with pytest.raises(ValueError, match="1 feature names for 2 columns"):
        Table(np.zeros((2, 2)), None, ("a",))
    with pytest.raises(ValueError, match="one entry per row"):
        Table(np.zeros((2, 2)), np.zeros(3), ("a", "b"))


# ---------------------------------------------------------------- StreamWindow


def numbered_rows(first: int, count: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Row k holds k in every cell and as its label: a torn or misplaced row shows."""
    values = np.arange(first, first + count, dtype=np.float64)
    return np.repeat(values[:, None], width, axis=1), values


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(1, 9),
    batches=st.lists(st.integers(0, 20), max_size=12),
)
def test_window_keeps_the_last_capacity_rows_in_order(capacity: int, batches: list[int]) -> None:
    window = StreamWindow(3, capacity)
    total = 0
    for size in batches:
        rows, labels = numbered_rows(total, size, 3)
        window.append(rows, labels)
        total += size

        kept = np.arange(max(0, total - capacity), total, dtype=np.float64)
        snapshot = window.snapshot()
        np.testing.assert_array_equal(snapshot.y, kept)
        np.testing.assert_array_equal(snapshot.X, np.repeat(kept[:, None], 3, axis=1))
        assert len(window) == len(kept)
        assert window.dropped == total - len(kept)


def test_window_takes_single_rows_and_its_snapshot_is_a_copy() -> None:
    window = StreamWindow(2, 3, feature_names=("temp", "rpm"))
    window.append(np.array([1.0, NAN]), np.array([1.0]))
    window.append([2.0, 20.0], 0)

    snapshot = window.snapshot()
    snapshot.X[:] = -1

    again = window.snapshot()
    np.testing.assert_array_equal(again.X, [[1, NAN], [2, 20]])
    np.testing.assert_array_equal(again.y, [1, 0])
    assert again.feature_names == ("temp", "rpm")


def test_unlabelled_window() -> None:
    window = StreamWindow(1, 2, labelled=False)
    window.append([[1.0], [2.0], [3.0]])

    snapshot = window.snapshot()
    assert snapshot.y is None
    np.testing.assert_array_equal(snapshot.X, [[2], [3]])
    assert window.dropped == 1
    assert window.nbytes == 2 * 8


@pytest.mark.parametrize(
    ("rows", "labels", "message"),
    [
        ([1.0, 2.0, 3.0], [0.0], r"2 values each, got shape \(1, 3\)"),
        ([[[1.0, 2.0]]], [0.0], "2 values each"),
        ([[1.0, np.inf]], [0.0], "infinite value"),
        ([[1.0, 2.0]], None, "append needs one label per row"),
        ([[1.0, 2.0]], [0.0, 1.0], r"one label per row \(1\), got shape \(2,\)"),
        ([[1.0, 2.0]], [[0.0]], r"one label per row \(1\), got shape \(1, 1\)"),
        ([[1.0, 2.0]], [NAN], "drop such rows first"),
    ],
)
def test_window_refuses_bad_rows_and_keeps_what_it_had(
    rows: object, labels: object, message: str
) -> None:
    window = StreamWindow(2, 4)
    window.append([[5.0, 6.0]], [1.0])

    with pytest.raises(DataError, match=message):
        window.append(rows, labels)

    np.testing.assert_array_equal(window.snapshot().X, [[5, 6]])
    assert window.dropped == 0


def test_unlabelled_window_refuses_labels() -> None:
    with pytest.raises(DataError, match="unlabelled"):
        StreamWindow(1, 2, labelled=False).append([1.0], [0.0])


def test_window_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="capacity >= 1"):
        StreamWindow(2, 0)
    with pytest.raises(ValueError, match="1 feature names for 2 features"):
        StreamWindow(2, 5, feature_names=("a",))


def test_window_memory_is_fixed_after_a_million_rows() -> None:
    window = StreamWindow(4, 1000)
    assert window.nbytes == 1000 * (4 + 1) * 8
    before = window.nbytes

    for batch in range(1000):
        window.append(*numbered_rows(batch * 1000, 1000, 4))

    assert window.nbytes == before
    assert len(window) == 1000 and window.dropped == 999_000
    np.testing.assert_array_equal(window.snapshot().y, np.arange(999_000.0, 1_000_000.0))


@pytest.fixture
def frequent_thread_switches() -> Iterator[None]:
    """Let the interpreter switch threads every microsecond, so races show up."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


@pytest.mark.usefixtures("frequent_thread_switches")
def test_concurrent_snapshots_never_see_a_torn_row() -> None:
    window = StreamWindow(8, 50)
    done = threading.Event()

    def sensor() -> None:
        total = 0
        for batch in range(6000):
            size = 1 + batch % 7  # batches straddle the ring's end in every phase
            window.append(*numbered_rows(total, size, 8))
            total += size
        done.set()

    thread = threading.Thread(target=sensor)
    thread.start()
    snapshots = 0
    while not done.is_set() or snapshots == 0:
        snapshot = window.snapshot()
        snapshots += 1
        assert snapshot.y is not None
        # every row whole (its cells and label agree) and rows consecutive, oldest first
        np.testing.assert_array_equal(snapshot.X, np.repeat(snapshot.y[:, None], 8, axis=1))
        if len(snapshot.y):
            np.testing.assert_array_equal(np.diff(snapshot.y), 1.0)
    thread.join()
    assert snapshots > 10
