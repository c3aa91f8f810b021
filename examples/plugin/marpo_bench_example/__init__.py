"""Example marpo-bench plugin (see docs/extending.md): the ``rendezvous`` env family and the
``ppo_kl`` algorithm, each in its own file, registered in ``pyproject.toml``'s entry points."""
