"""ecg: staged, reproducible ECG classification on PhysioNet databases."""

__version__ = "0.1.0"
