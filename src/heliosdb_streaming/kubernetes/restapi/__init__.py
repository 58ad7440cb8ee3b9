"""The Kubernetes REST backend: ``helios server --substrate kubernetes`` over StreamingJob resources.

``apiserver`` is the ``JobService`` (commands change resources, reads come from them and from the
operator), ``jobviews`` turns resources into the API's views (pure), ``readclient`` asks the
operator's read API (``kubernetes.operator.readapi``) and ``podlogs`` reads worker pods' logs.
"""
