"""Command-line tools around the detector: replay a log, tail alerts, the live demo."""
