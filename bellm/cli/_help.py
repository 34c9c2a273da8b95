"""Help texts that several subcommands share."""

DATA_DIR_HELP = "folder holding sts/ (default: shared/data)"
