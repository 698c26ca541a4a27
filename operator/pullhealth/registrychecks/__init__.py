"""RegistryCheck custom resources: the check, its schedule, its handlers and ``pullhealth recheck``."""
