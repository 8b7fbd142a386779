"""stagevar: training-free, stage-aware acceleration of visual autoregressive image generators."""
from .adapters import UnsupportedModelError, register_adapter
from .calibrate import Calibration, calibrate
from .api import accelerate, accelerated, current_config, is_accelerated, release_graphs, report, restore
from .executors import GraphFallbackWarning, GraphsUnavailableError
from .config import ConfigError, StageVARConfig
from .plan import NoAccelerationWarning
from .presets import preset, presets

__version__ = "0.1.0"

__all__ = [
    "accelerate", "restore", "accelerated", "report", "release_graphs", "is_accelerated", "current_config",
    "GraphsUnavailableError", "GraphFallbackWarning", "register_adapter",
    "calibrate", "Calibration", "StageVARConfig", "preset", "presets", "ConfigError", "UnsupportedModelError", "NoAccelerationWarning",
]
