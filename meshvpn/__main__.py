"""`python -m meshvpn` is the `meshvpn` command."""

from meshvpn.cli import main

raise SystemExit(main())
