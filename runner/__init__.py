"""mcp-sandbox-runner"""
