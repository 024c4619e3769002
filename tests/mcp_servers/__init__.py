"""Small real MCP servers the tests connect to, written with the MCP SDK's server API."""
