"""The HTTP face of the engine: the trigger API (``app.py``), its keys (``keys.py``) and health (``health.py``)."""
