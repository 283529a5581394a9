"""qcow2-analyze: the command line front end over the core (`collectors`)."""
