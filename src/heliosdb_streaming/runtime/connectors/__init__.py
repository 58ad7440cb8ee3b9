"""Sources and sinks (their settings are :mod:`heliosdb_streaming.model.connectors`)."""
