"""The kubelet's gRPC APIs as protos written for sriovlib, with the Python modules
grpcio-tools generates from them (``nox -s protos``; committed, and checked to be
current by the tests).

- ``deviceplugin.proto`` — the device-plugin API ``v1beta1``: the kubelet's
  ``Registration`` service and the plugin's ``DevicePlugin`` service.
- ``podresources.proto`` — the pod-resources API ``v1``: the kubelet's
  ``PodResourcesLister`` (which devices each pod's containers were given).
- ``pluginregistration.proto`` — the plugin-registration API ``v1``: the ``Registration``
  service a plugin serves in the kubelet's ``plugins_registry`` directory (``GetInfo``,
  ``NotifyRegistrationStatus``); the DRA driver registers through it.
- ``dra.proto`` — the DRA plugin API ``v1`` (Kubernetes 1.34): the driver's ``DRAPlugin``
  service (``NodePrepareResources``, ``NodeUnprepareResources``).
"""
