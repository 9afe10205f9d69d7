"""Iris species classifier for hostd; the model class is ``iris_model.model:IrisModel``."""

__version__ = "1.0.0"
