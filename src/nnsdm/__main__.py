from nnsdm.cli import main

raise SystemExit(main())
