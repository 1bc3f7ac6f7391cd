from fslib.cli import main

raise SystemExit(main())
