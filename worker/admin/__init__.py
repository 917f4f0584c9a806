"""Admin actions on jobs and intake, and their command-line commands."""
