"""How the ``migrate-project`` flow is served and deployed (see ``deployments/serve.py``)."""
