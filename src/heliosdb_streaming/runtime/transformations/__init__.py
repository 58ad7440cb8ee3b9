"""Stream steps: filter, map, key_by, window, cep; their settings are in ``model/transformations.py``."""
