"""``python -m supernode.petals.server``: the same as ``supernode petals-node``."""

from supernode.petals.server.run import main

raise SystemExit(main())
