"""The pure core: codes, references, models, redaction, credentials, classification, diagnosis.

No I/O and no Kubernetes client here."""
