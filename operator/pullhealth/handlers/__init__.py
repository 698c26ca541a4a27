"""kopf handlers only: parse -> call domain code -> patch.

Importing a submodule registers its handlers; ``pullhealth.runner`` imports the ones the
command line enables (the pod watcher can be turned off with ``--no-pods``).
"""
