"""The gateway side of a pool: the endpoint picker and the local front of ``serve --replicas``.

* :mod:`~accelgen.gateway.pods`: which pods a pool has (a list, or a headless Service's
  DNS name) and what each one's sidecar reports, as :class:`~accelgen.core.routing.PodState`.
* :mod:`~accelgen.gateway.intake`: a request's headers and body as a
  :class:`~accelgen.core.routing.RouteRequest` (its tier read as the sidecar reads it).
* :mod:`~accelgen.gateway.picker`: the Endpoint Picker of the Gateway API Inference
  Extension, an Envoy ``ext_proc`` gRPC service running a core routing policy.
* :mod:`~accelgen.gateway.front`: an aiohttp proxy that plays Envoy's part on one
  machine, asking the same router for every request; :mod:`~accelgen.gateway.pool`
  starts N sidecars behind it (``accelgen serve --replicas N``).
"""
