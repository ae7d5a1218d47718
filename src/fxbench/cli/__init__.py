"""The command-line interface: thin Typer verbs over the core packages."""
