"""Libraries for the scripts in scripts/ (imported, never run): nothing here is a command-line entry point."""
