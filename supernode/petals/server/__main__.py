"""``python -m supernode.petals.server``: the same as ``supernode petals-node``."""

from supernode.petals.server.app import main

raise SystemExit(main())
