"""The REST API: an aiohttp app over the ``JobService`` protocol, its errors, OpenAPI and ``/metrics``."""
