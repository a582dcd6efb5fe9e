from ecg.cli import main

raise SystemExit(main())
