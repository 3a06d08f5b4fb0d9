"""deploy: service scripts, the pytriton server, compose files for a real deployment."""
