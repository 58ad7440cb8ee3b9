"""User code for the tests of python steps (importable once tests/userpkg is on PYTHONPATH)."""
