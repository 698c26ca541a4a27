"""kopf handlers only: parse -> call domain code -> patch. Importing this registers them."""

from pullhealth.handlers import registrychecks, startup

__all__ = ["registrychecks", "startup"]
