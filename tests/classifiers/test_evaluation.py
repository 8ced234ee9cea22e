from __future__ import annotations

import pytest

from classifiers.evaluation import binary_metrics, roc_auc


def test_roc_auc_known_values() -> None:
    assert roc_auc([True, True, False, False], [0.9, 0.8, 0.2, 0.1]) == 1.0
    assert roc_auc([True, True, False, False], [0.1, 0.2, 0.8, 0.9]) == 0.0
    assert roc_auc([True, False], [0.5, 0.5]) == 0.5
    assert roc_auc([True, False, True, False], [0.9, 0.7, 0.6, 0.2]) == pytest.approx(0.75)
    assert roc_auc([True, True], [0.1, 0.2]) is None


def test_binary_metrics() -> None:
    metrics = binary_metrics([True, True, False, False, False], [True, False, True, False, False], [0.9, 0.4, 0.6, 0.1, 0.2])
    assert (metrics.true_positives, metrics.false_positives, metrics.false_negatives, metrics.true_negatives) == (1, 1, 1, 2)
    assert metrics.precision == 0.5 and metrics.recall == 0.5 and metrics.f1 == 0.5
    assert metrics.accuracy == pytest.approx(0.6)
    assert metrics.roc_auc == pytest.approx(5 / 6)
    none_predicted = binary_metrics([True, False], [False, False], [0.1, 0.0])
    assert none_predicted.precision is None and none_predicted.recall == 0.0 and none_predicted.f1 is None
