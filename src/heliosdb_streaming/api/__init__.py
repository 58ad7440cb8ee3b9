"""HeliosDB Streaming."""
