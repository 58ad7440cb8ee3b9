"""The kopf operator: it runs the control plane and starts workers as pods.

``mapping`` and ``status`` are pure (spec -> job config and next step, job record -> CR status),
``pods`` builds manifests, ``launcher`` starts and watches worker pods, ``bindings`` remembers which
resource each job belongs to, ``reconciler`` acts on one StreamingJob, ``savepoints`` on one Savepoint
(the snapshot controller), ``statuswriter`` writes every StreamingJob's status, ``events`` posts their
(deduplicated) Events, ``resync`` recreates their deleted Services, Secrets and budgets, ``handlers``
wires kopf to them, ``opmetrics`` serves the operator's metrics and the CRDs' conversion webhook,
``readapi`` serves the control plane's reads to the REST backend and ``app`` composes everything.
"""
