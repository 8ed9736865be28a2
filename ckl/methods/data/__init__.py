"""Data methods: replay and its policies."""
