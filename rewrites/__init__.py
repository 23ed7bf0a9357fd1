"""The graph compiler of ann2snn: loading, calibration, rewrite passes, export."""
__version__ = "0.1.0"
