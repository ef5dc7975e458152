"""The admin console's page and script, served by the API at /admin/ (mint/api/console.py)."""
