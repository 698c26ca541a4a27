"""The probe chain and the one place that decides a pull's path.

``probechain`` runs the steps of :mod:`pullhealth.probes`; ``pullpath`` decides which credential a
pull uses for pods and RegistryChecks alike; ``trust`` holds what the admin lends to namespaces;
``singleflight`` makes one chain per key per interval; ``pullsources`` reads pull secrets."""
