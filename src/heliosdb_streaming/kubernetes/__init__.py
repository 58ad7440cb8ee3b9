"""The Kubernetes substrate: StreamingJob and Savepoint resources, the operator that runs them and the
REST backend that serves them.

``crds`` (with ``structural``, and ``casing`` for v1alpha2's camelCase names) generates the
CustomResourceDefinitions from the job models: the contract both subpackages speak; ``conversion`` is
the CRDs' conversion webhook between v1alpha1 and v1alpha2. ``kube`` is the async API client both use
(credentials from kopf's login). ``operator`` is the kopf operator that hosts the control plane and
starts workers as pods, with its internal read API; ``restapi`` is the ``JobService`` that ``helios
server --substrate kubernetes`` serves, over the resources and that read API. Neither imports the
embedded substrate.
"""
