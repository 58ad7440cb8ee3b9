"""The ``helios`` command: run and validate jobs, ``helios server``, ``helios operator``, ``helios jobs``."""
