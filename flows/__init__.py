"""Prefect flows and tasks that orchestrate the projmig library."""
