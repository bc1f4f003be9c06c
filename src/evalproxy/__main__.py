from evalproxy.cli import main

raise SystemExit(main())
