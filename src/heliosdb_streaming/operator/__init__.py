"""The kubernetes substrate: a kopf operator that runs the control plane and starts workers as pods.

``crds`` (with ``structural``) generates the CustomResourceDefinitions from the job models. ``mapping``
and ``status`` are pure (spec -> job config and next step, job record -> CR status), ``pods`` builds
manifests, ``kube`` is the small async API client, ``launcher`` starts and watches worker pods,
``reconciler`` acts on one resource, ``handlers`` wires kopf to it and ``app`` composes everything.
"""
