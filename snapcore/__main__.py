from snapcore.cli import main

raise SystemExit(main())
