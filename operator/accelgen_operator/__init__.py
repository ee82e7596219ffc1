"""The AccelGen Kubernetes operator: InferencePool (accelgen.dev/v1alpha1) → SLO-scheduled vLLM.

Layout: ``resources`` (pure: spec → child manifests), ``tierconfig`` (pure: spec → the
core's tier and scheduler files), ``status`` (pure: pod stats → status and conditions),
``autoscaling`` (pure: status → scale decision), ``kube`` (the API client),
``handlers`` (thin kopf handlers), ``cli`` (the ``accelgen-operator`` command).
"""

GROUP = "accelgen.dev"
VERSION = "v1alpha1"
PLURAL = "inferencepools"
KIND = "InferencePool"
API_VERSION = f"{GROUP}/{VERSION}"

__all__ = ["API_VERSION", "GROUP", "KIND", "PLURAL", "VERSION"]
