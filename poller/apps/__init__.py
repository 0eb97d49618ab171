"""The applications built on the library: the command line, the daemon, the demo, metrics and
probes, logging, systemd notification, signal handling and exit codes. Nothing in the library
imports these.
"""
