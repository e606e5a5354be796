"""``python -m redis_cache``: the same command line as ``redis-cache``."""

from .cli import main

raise SystemExit(main())
