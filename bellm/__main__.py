from bellm.cli import main

raise SystemExit(main())
