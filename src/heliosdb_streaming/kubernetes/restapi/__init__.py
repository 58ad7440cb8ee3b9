"""The Kubernetes REST backend: ``helios server --substrate kubernetes`` over StreamingJob resources.

``apiserver`` is the ``JobService``: its reads come from the resources and from the operator, its
commands (``commands``) change resources and wait for the operator's answer, and both go through one
namespace's clients and lookups (``clients``); ``jobviews`` turns resources into the API's views
(pure), ``readclient`` asks the operator's read API (``kubernetes.operator.readapi``) and ``podlogs``
reads worker pods' logs.
"""
