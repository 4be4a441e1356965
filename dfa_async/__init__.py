"""dfa_async: a layer-parallel, asynchronous trainer for networks that learn with Direct Feedback
Alignment, and the toolkit of Launay, Poli & Krzakala (2019), arXiv:1906.04554."""
from .config import Config, ConfigError, load
from .run import Result, train

__all__ = ["Config", "ConfigError", "Result", "load", "train"]
__version__ = "0.1.0"
