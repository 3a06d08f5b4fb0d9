"""storage: SQLAlchemy models and migrations, the result store, the Redis/in-memory cache, the model registry."""
