"""Update codecs end to end without a broker: node compression, wire, aggregator decode."""

from __future__ import annotations

import numpy as np
import pytest

from fedbus.aggregator.buffer import AggregationConfig, BufferedAggregator
from fedbus.aggregator.core import AggregatorCore
from fedbus.broker.codec import decode, encode
from fedbus.broker.errors import CodecError, ConfigError
from fedbus.broker.messages import RejectReason, TrainingTask, UpdateMessage
from fedbus.broker.tensors import WireTensor, decode_weights
from fedbus.node.compression import CodecSpec, compress

SHAPES = {"W": (64, 10), "b": (10,)}
CODECS = ["q8", "q4", "topk:0.1", "topk:0.05+q8", "topk:0.2+q4"]


def _delta(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in SHAPES.items()}


def _through_the_wire(tensors: tuple[WireTensor, ...]) -> dict[str, np.ndarray]:
    payload = encode(UpdateMessage("n1", 1, 0, 10, tensors))
    return decode_weights(decode(payload, UpdateMessage).tensors, SHAPES)


@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
@pytest.mark.parametrize("text", CODECS)
def test_error_feedback_loses_no_mass_over_many_updates(text: str, rounding: str) -> None:
    rng = np.random.default_rng(0)
    spec = CodecSpec.parse(text, rounding=rounding)
    residual: dict[str, np.ndarray] = {}
    sent_total = {name: np.zeros(shape, np.float64) for name, shape in SHAPES.items()}
    delta_total = {name: np.zeros(shape, np.float64) for name, shape in SHAPES.items()}
    for step in range(40):
        delta = _delta(rng)
        tensors, residual = compress(delta, residual, spec, seed=step)
        for name, values in _through_the_wire(tensors).items():
            sent_total[name] += values
            delta_total[name] += delta[name]
    for name in SHAPES:
        # sent + what is still held back == everything the node produced
        np.testing.assert_allclose(
            sent_total[name] + residual[name], delta_total[name], rtol=0, atol=2e-3
        )


def test_q8_error_is_at_most_one_step_per_element() -> None:
    rng = np.random.default_rng(1)
    delta = _delta(rng)
    tensors, residual = compress(delta, {}, CodecSpec.parse("q8"), seed=3)
    decoded = _through_the_wire(tensors)
    for name, values in delta.items():
        step = np.abs(values).max() / 127  # one block when the tensor fits in 256
        if values.size <= 256:
            assert np.abs(decoded[name] - values).max() <= step * 1.0001
        np.testing.assert_array_equal(residual[name], values - decoded[name])


@pytest.mark.parametrize("text", ["f32", *CODECS])
def test_aggregator_accumulates_each_codec_as_its_dense_decoding(text: str) -> None:
    rng = np.random.default_rng(2)
    delta = _delta(rng)
    tensors, _ = compress(delta, {}, CodecSpec.parse(text), seed=5)
    expected = {name: 0.25 * values for name, values in _through_the_wire(tensors).items()}
    task = TrainingTask("toy", "softmax", SHAPES)
    initial = {name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()}
    config = AggregationConfig.fedbuff(4, weight_by_samples=False)
    core = AggregatorCore(task, BufferedAggregator(config, initial))
    outcome = core.handle_update("n1", encode(UpdateMessage("n1", 1, 0, 10, tensors)))
    assert outcome.ack.accepted
    core.flush()
    for name in SHAPES:
        np.testing.assert_allclose(core.aggregator.weights[name], expected[name] * 4, rtol=1e-6)


def test_compressed_updates_are_smaller() -> None:
    rng = np.random.default_rng(3)
    delta = _delta(rng)
    sizes = {}
    for text in ["f32", "q8", "q4", "topk:0.01+q8"]:
        tensors, _ = compress(delta, {}, CodecSpec.parse(text), seed=1)
        sizes[text] = sum(len(t.data) + len(t.scales) + len(t.indices) for t in tensors)
    assert sizes["f32"] / sizes["q8"] > 3.8
    assert sizes["f32"] / sizes["q4"] > 7
    assert sizes["f32"] / sizes["topk:0.01+q8"] > 30


@pytest.mark.parametrize(
    ("tensor", "why"),
    [
        (WireTensor("b", "float32", (10,), "q8", b"\x00" * 9, 256, b"\x00" * 4), "data bytes"),
        (WireTensor("b", "float32", (10,), "q8", b"\x00" * 10, 4, b"\x00" * 4), "scale bytes"),
        (WireTensor("b", "float32", (10,), "q4", b"\x00" * 5, 0, b""), "block size"),
        (
            WireTensor(
                "b",
                "float32",
                (10,),
                "topk",
                b"\x00" * 8,
                indices=b"\x03\0\0\0\x01\0\0\0",
                values_codec="f32",
            ),
            "strictly increasing",
        ),
        (
            WireTensor(
                "b",
                "float32",
                (10,),
                "topk",
                b"\x00" * 4,
                indices=b"\x0a\0\0\0",
                values_codec="f32",
            ),
            "strictly increasing",
        ),
        (
            WireTensor("b", "float32", (10,), "topk", b"", indices=b"\x01\0", values_codec="f32"),
            "index bytes",
        ),
        (WireTensor("b", "float32", (10,), "f32", b"\x00" * 40, 8, b"\x00" * 8), "block/scales"),
    ],
)
def test_malformed_compressed_tensors_are_refused_before_decoding(
    tensor: WireTensor, why: str
) -> None:
    with pytest.raises(CodecError, match=why):
        tensor.check_layout()


def test_negative_or_nan_scale_is_refused() -> None:
    rng = np.random.default_rng(4)
    tensors, _ = compress(_delta(rng), {}, CodecSpec.parse("q8"), seed=1)
    bad = WireTensor(
        "b",
        "float32",
        (10,),
        "q8",
        tensors[1].data,
        tensors[1].block,
        np.float32([np.nan]).tobytes(),
    )
    task = TrainingTask("toy", "softmax", SHAPES)
    initial = {name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()}
    core = AggregatorCore(task, BufferedAggregator(AggregationConfig.fedbuff(4), initial))
    outcome = core.handle_update("n1", encode(UpdateMessage("n1", 1, 0, 10, (tensors[0], bad))))
    assert outcome.ack.reason is RejectReason.NON_FINITE
    negative = WireTensor(
        "b", "float32", (10,), "q8", tensors[1].data, tensors[1].block, np.float32([-1]).tobytes()
    )
    outcome = core.handle_update(
        "n1", encode(UpdateMessage("n1", 2, 0, 10, (tensors[0], negative)))
    )
    assert outcome.ack.reason is RejectReason.MALFORMED
    assert core.aggregator.buffered == 0


@pytest.mark.parametrize("text", ["topk", "topk:0", "topk:2", "q2", "topk:0.1+q2", "topk:x"])
def test_bad_codec_names_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        CodecSpec.parse(text)


def test_nearest_rounding_reaches_the_wire_and_errs_at_most_half_a_step() -> None:
    delta = _delta(np.random.default_rng(4))
    for text in ("q8", "topk:0.5+q4"):
        nearest = CodecSpec.parse(text, rounding="nearest")
        first, residual = compress(delta, {}, nearest, seed=1)
        again, _ = compress(delta, {}, nearest, seed=2)
        assert first == again  # deterministic: the seed plays no part
        stochastic, _ = compress(delta, {}, CodecSpec.parse(text), seed=1)
        assert stochastic != first
    tensors, residual = compress(delta, {}, CodecSpec.parse("q8", rounding="nearest"), seed=0)
    for name, values in _through_the_wire(tensors).items():
        if delta[name].size <= 256:  # one block: the step is max|x| / 127
            step = np.abs(delta[name]).max() / 127
            assert np.abs(values - delta[name]).max() <= step * (0.5 + 2.0**-15)
    with pytest.raises(ConfigError, match="rounding"):
        CodecSpec.parse("q8", rounding="down")
