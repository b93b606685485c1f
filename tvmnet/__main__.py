from tvmnet.cli import main

raise SystemExit(main())
