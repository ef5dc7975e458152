"""The `mint` CLI, one module per command group. mint/cli.py assembles them."""
