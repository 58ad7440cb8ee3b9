"""Records crossing stages: key groups, routing, per-origin order and watermarks, the transports."""
