"""Handwritten digit classifier for hostd; the model class is ``digits_model.model:DigitsModel``."""

__version__ = "1.0.0"
