"""``python -m proxy`` is ``rotaproxy``."""

from proxy.cli import main

raise SystemExit(main())
