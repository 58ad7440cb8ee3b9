"""The job model: configs, settings, types, errors, durations and the expression language (pure, no I/O).

The bottom layer: every other subpackage may import it, it imports none of them.
"""
