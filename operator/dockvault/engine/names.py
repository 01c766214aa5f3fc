"""Engine names the command line needs before anything talks to dockerd (kept light: `dockvault --help` imports
only this, not the Docker SDK)."""

DEFAULT_HELPER_IMAGE = "dockvault:latest"
TRANSPORTS = ("auto", "api", "fifo")
