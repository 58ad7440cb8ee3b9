"""What runs inside a worker: sources, transformations, sinks, state and checkpoints of tasks."""
