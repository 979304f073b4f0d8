from rig2nwb.cli import main

raise SystemExit(main())
