"""Telemetry, forecasts and anomaly scores (docs/prediction.md)."""
