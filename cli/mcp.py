"""`spore mcp`: this spore's memory for an AI assistant (Claude Desktop, Claude
Code, Cursor, VS Code), over MCP on stdin/stdout. A client of the running
daemon's API like every other command; the server is p2pnode.mcp, from the
optional extra ``sporemind[mcp]``."""

from __future__ import annotations

import os

import click

from p2pnode.config import load_config
from p2pnode.errors import SporeError


@click.command("mcp")
@click.pass_context
def mcp_command(ctx: click.Context) -> None:
    """Serve this spore to an AI assistant over MCP (stdio), calling its daemon.

    Assistants start it themselves: give them the command `spore mcp` (the
    README has the configuration for each). Logs go to stderr."""
    try:
        from p2pnode.mcp import run_stdio
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] != "mcp":
            raise
        raise SporeError("the MCP server needs the mcp extra: pip install "
                         "'sporemind[mcp]' (from a checkout: pip install '.[mcp]')") from None
    # The group's options (--state-dir, --port...) over the environment, as cli.main.config.
    run_stdio(load_config(os.environ, dict(ctx.find_root().obj or {})))
