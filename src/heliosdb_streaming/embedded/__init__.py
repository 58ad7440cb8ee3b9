"""The embedded substrate: the SQLite job store, the subprocess launcher and the job log files."""
