"""pullhealth: tells Kubernetes admins why an image pull fails, from inside the cluster."""

__version__ = "0.1.0"
