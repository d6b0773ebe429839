"""Metrics and calibration."""
