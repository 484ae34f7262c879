"""ahi_torch: feed medical images stored in AWS HealthImaging into PyTorch."""

__version__ = "0.1.0"
