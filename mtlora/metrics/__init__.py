"""Evaluation: torchmetrics metrics per task, the multi-task evaluator, Δm and reference rows.

Units: percent for IoU/F/accuracy-like values, degrees for angles, metres for depth. Every metric
returns NaN until it has seen a valid pixel. See the module docstrings for the deviations from
the official MTLoRA evaluators (normals "rmse" naming, saliency maxF, edge odsF).
"""

from mtlora.metrics.collection import (
    METRIC_DIRECTIONS,
    MultiTaskEvaluator,
    build_task_metrics,
    headline_key,
    headline_metric,
)
from mtlora.metrics.delta_m import (
    PUBLISHED_PASCAL_ROWS,
    SINGLE_TASK_BASELINES,
    delta_m,
    delta_m_tensor,
    relative_changes,
    resolve_baselines,
)
from mtlora.metrics.depth import DepthMetric
from mtlora.metrics.edge import EdgeMetric
from mtlora.metrics.loss import LossMean
from mtlora.metrics.normals import NormalsMetric
from mtlora.metrics.saliency import SaliencyMetric
from mtlora.metrics.segmentation import SegmentationMetric

__all__ = [
    "METRIC_DIRECTIONS",
    "PUBLISHED_PASCAL_ROWS",
    "SINGLE_TASK_BASELINES",
    "DepthMetric",
    "EdgeMetric",
    "LossMean",
    "MultiTaskEvaluator",
    "NormalsMetric",
    "SaliencyMetric",
    "SegmentationMetric",
    "build_task_metrics",
    "delta_m",
    "delta_m_tensor",
    "headline_key",
    "headline_metric",
    "relative_changes",
    "resolve_baselines",
]
