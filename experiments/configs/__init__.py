"""Run configs: one ``get_config()`` per file (``python -m mobileprune_jax run --config FILE.py[:ARG]``)."""
