"""The result store and the summaries computed from it."""
