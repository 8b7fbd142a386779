"""stagevar: training-free, stage-aware acceleration of visual autoregressive image generators.

The library is this package (no public name shadows one of its modules: ``stagevar.presets`` and
``stagevar.report`` are the modules, ``stagevar.preset_names()`` and ``stagevar.last_report(model)``
the functions); the workbench (calibration, benchmarks, quality, generation, the
demo, the command line) is :mod:`stagevar.tools`, loaded only when used: ``stagevar.calibrate``
and ``stagevar.Calibration`` are looked up from :mod:`stagevar.tools.calibrate` on first use.
"""
from .adapters import UnsupportedModelError, register_adapter
from .api import (ModelBusyError, accelerate, accelerated, current_config, is_accelerated, last_report, release_graphs,
                  restore)
from .engine import TextBucketWarning
from .executors import GraphFallbackWarning, GraphsUnavailableError
from .config import ConfigError, StageVARConfig
from .plan import NoAccelerationWarning
from .presets import preset, preset_names

__version__ = "0.1.0"

_TOOLS = {"calibrate": "calibrate", "Calibration": "Calibration"}  # public name -> name in stagevar.tools.calibrate


def __getattr__(name: str):
    if name in _TOOLS:
        from .tools import calibrate as _calibration

        return getattr(_calibration, _TOOLS[name])
    raise AttributeError(f"module 'stagevar' has no attribute {name!r}")


__all__ = [
    "accelerate", "restore", "accelerated", "last_report", "release_graphs", "is_accelerated", "current_config",
    "GraphsUnavailableError", "GraphFallbackWarning", "TextBucketWarning", "ModelBusyError", "register_adapter",
    "calibrate", "Calibration", "StageVARConfig", "preset", "preset_names", "ConfigError", "UnsupportedModelError", "NoAccelerationWarning",
]
