"""ckl: continual knowledge learning, editing and unlearning on one fact store.

Nothing here has import-time side effects (no seeding, logging set-up or patching);
those live in the CLI.
"""

__version__ = "0.1.0"
