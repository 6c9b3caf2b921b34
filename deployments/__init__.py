"""How the ``migrate-project`` and ``rollback-migration`` flows are served and deployed (see ``deployments/serve.py``)."""
