"""The HTTP API v1: ``app.create_app`` builds it, ``server`` runs it (see docs/http-api.md)."""
