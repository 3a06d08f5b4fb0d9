"""ingest: camera sources, the frame envelope, the synthetic line simulator, publishing to the bus."""
