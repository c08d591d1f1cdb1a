"""The HTTP API: `api.main.create_app()` is the entry point."""
