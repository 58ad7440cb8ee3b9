"""The kopf operator: it runs the control plane and starts workers as pods.

``mapping`` and ``status`` are pure (spec -> job config and next step, job record -> CR status),
``pods`` builds manifests, ``launcher`` starts and watches worker pods, ``bindings`` remembers which
resource each job belongs to, ``reconciler`` acts on one resource, ``handlers`` wires kopf to it,
``readapi`` serves the control plane's reads to the REST backend and ``app`` composes everything.
"""
