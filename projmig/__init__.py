"""projmig: move an osparc-simcore project (rows + objects) between deployments."""

__version__ = "0.1.0"
