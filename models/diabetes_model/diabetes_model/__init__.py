"""Diabetes progression regressor for hostd; the model class is ``diabetes_model.model:DiabetesModel``."""

__version__ = "1.0.0"
