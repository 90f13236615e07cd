"""EdgeNode's handling of what arrives, without a broker (messages fed in directly)."""

from __future__ import annotations

import numpy as np

from fedbus.broker.client import BrokerAddress
from fedbus.broker.codec import encode
from fedbus.broker.messages import ModelMessage, TrainingTask
from fedbus.broker.tensors import encode_weights
from fedbus.broker.topics import Topics
from fedbus.node.agent import EdgeNode, NodeSettings

TOPICS = Topics("unit")


def _node() -> EdgeNode:
    features = np.zeros((4, 3), np.float32)
    labels = np.array([0, 1, 0, 1], np.int64)
    return EdgeNode(NodeSettings("n1", BrokerAddress(), TOPICS), features, labels)


def _model(version: int, learner: str = "softmax", w_shape: tuple[int, int] = (3, 2)) -> bytes:
    task = TrainingTask("toy", learner, {"W": (3, 2), "b": (2,)})
    weights = {"W": np.zeros(w_shape, np.float32), "b": np.zeros(2, np.float32)}
    return encode(ModelMessage(version, task, encode_weights(weights)))


def test_node_keeps_the_newest_model_only() -> None:
    node = _node()
    node._take(TOPICS.model, _model(3))
    node._take(TOPICS.model, _model(2))
    assert node.latest_model is not None and node.latest_model.version == 3


def test_node_refuses_a_model_it_cannot_run_and_keeps_going() -> None:
    node = _node()
    node._take(TOPICS.model, _model(1))
    node._take(TOPICS.model, _model(2, learner="transformer"))
    node._take(TOPICS.model, _model(3, w_shape=(2, 3)))  # tensors do not fit the task
    node._take(TOPICS.model, b"\x00 not msgpack")
    assert node.latest_model is not None and node.latest_model.version == 1


def test_predict_answers_from_the_latest_model_without_a_connection() -> None:
    node = _node()
    task = TrainingTask("toy", "softmax", {"W": (3, 2), "b": (2,)})
    weights = {"W": np.zeros((3, 2), np.float32), "b": np.array([0.0, 1.0], np.float32)}
    node._take(TOPICS.model, encode(ModelMessage(1, task, encode_weights(weights))))
    assert node.predict(np.ones((2, 3), np.float32)).tolist() == [1, 1]
