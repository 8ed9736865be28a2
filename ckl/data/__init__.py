"""Facts, streams of changes, the synthetic world and the importers (the lowest data layer)."""
