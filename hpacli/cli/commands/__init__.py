"""One module per command; each exposes ``command`` (a plain function Typer wraps)."""
