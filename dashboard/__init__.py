"""The proxy's web dashboard (``--dashboard-port``) and its Prometheus ``/metrics``."""
