"""Benchmarks of projmig against rclone, s5cmd and a raw aiobotocore loop: ``python -m bench all``."""
