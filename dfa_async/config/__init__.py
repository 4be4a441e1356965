"""Typed settings: the schema and its checks (`schema`), loading from TOML with ``--set`` overrides and
writing back (`loading`), and what a resumed run may change (`resume`). Validated before anything starts;
every bad setting raises ``ConfigError`` with one line that names the key and what is allowed."""
from .loading import RENAMED, describe, from_dict, load, parse_override, to_toml, upgrade
from .resume import EXTENDABLE, NOT_LEARNED, differences
from .schema import (SECTIONS, AlignmentConfig, BottleneckConfig, CheckpointConfig, Config, ConfigError, DataConfig,
                     FeedbackConfig, MetricsConfig, ModelConfig, OptimConfig, RuntimeConfig, TrainConfig, validate)

__all__ = ["AlignmentConfig", "BottleneckConfig", "CheckpointConfig", "Config", "ConfigError", "DataConfig",
           "EXTENDABLE", "FeedbackConfig", "MetricsConfig", "ModelConfig", "NOT_LEARNED", "OptimConfig", "RENAMED", "RuntimeConfig",
           "SECTIONS", "TrainConfig", "describe", "differences", "from_dict", "load", "parse_override", "to_toml",
           "upgrade", "validate"]
