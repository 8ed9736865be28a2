"""Importers: benchmark files -> ckl Streams (one module per format)."""
