"""hostd: one asyncio daemon that serves many ML models over many protocols."""

from hostd.errors import ErrorCode, HostdError
from hostd.model import MLModel, MLModelDecorator

__all__ = ["ErrorCode", "HostdError", "MLModel", "MLModelDecorator"]
__version__ = "0.1.0"
