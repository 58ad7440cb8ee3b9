"""A module whose import fails: its own top-level code raises."""

raise RuntimeError("broken on purpose")
