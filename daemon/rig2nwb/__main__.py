from rig2nwb.commands.cli import main

raise SystemExit(main())
