"""HeliosDB Streaming: declarative streaming jobs with Flink-style lifecycle management."""

__version__ = "0.1.0"
